-- pgfleet bench: a primary-key read whose statement carries a 13-digit integer (the size of an epoch time in
-- milliseconds or of a generated 64-bit id), so that consecutive statements differ in a constant too large
-- for a 32-bit integer. A proxy that parses statements sees a new text each time; pgfleet's decision cache
-- keys such constants by the integer types they fit (router::cache).
\set aid random(1, 100000 * :scale)
\set key 1700000000000 + :aid
SELECT abalance FROM pgbench_accounts WHERE aid = :key - 1700000000000;
