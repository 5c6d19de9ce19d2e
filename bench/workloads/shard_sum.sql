-- pgfleet bench, sharded workload: an aggregate without a shard key. Through a sharded pgfleet it runs on
-- every shard (their replicas) and pgfleet adds up the counts and sums; elsewhere it is one server's query.
SELECT count(*), sum(balance) FROM accounts;
