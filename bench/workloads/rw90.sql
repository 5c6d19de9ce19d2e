-- pgfleet bench: 90/10 read/write mix on the pgbench tables (pgbench -i).
-- One transaction of this script is one statement: 90% of them are a primary-key read of
-- pgbench_accounts (a replica-routable SELECT for pgfleet and pgpool-II), 10% an autocommit UPDATE of the
-- same table (always the primary). No explicit transaction, so a read-splitting proxy may spread the reads.
\set aid random(1, 100000 * :scale)
\set roll random(1, 100)
\set delta random(-5000, 5000)
\if :roll <= 90
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\else
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
\endif
