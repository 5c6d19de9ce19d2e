-- pgfleet bench, sharded workload: an autocommit write by shard key (one shard's primary).
\set id random(1, :naccounts)
\set delta random(-500, 500)
UPDATE accounts SET balance = balance + :delta WHERE id = :id;
