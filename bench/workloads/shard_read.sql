-- pgfleet bench, sharded workload: a read by shard key (one shard; a replica of it through pgfleet).
-- Table accounts (id bigint PRIMARY KEY, owner text, balance numeric) with ids 1..:naccounts (pgbench -D).
\set id random(1, :naccounts)
SELECT balance FROM accounts WHERE id = :id;
