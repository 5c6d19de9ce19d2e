#!/usr/bin/env python3
"""psycopg 3 pipelines whose named statements (_pg3_N) are parsed once and bound after later Syncs, on a
session pinned by a temporary table and on one that is not. Run by tests/it/transaction_pooling.rs under
transaction pooling.

Usage: psycopg3_pipeline_names.py DSN
Exits 0 when every check passed, 1 printing the failures otherwise.
"""

import sys

import psycopg

DSN = sys.argv[1]
FAILURES = []


def run(what, table, create):
    try:
        with psycopg.connect(DSN, autocommit=True, prepare_threshold=0) as conn:
            conn.execute(create)
            conn.execute(f"truncate {table}")
            cur = conn.cursor()
            for _ in range(3):
                with conn.pipeline():
                    cur.executemany(f"insert into {table} (id) values (%s)", [(10,), (20,)], returning=True)
                    cur.executemany(f"insert into {table} (id) values (%s)", [(10,), (20,)], returning=True)
                # Reads between pipelines: the next pipeline may start on another node or connection.
                conn.execute("select 1").fetchone()
                with conn.pipeline():
                    cur.execute("select 2")
                    cur.executemany(f"insert into {table} (id) values (%s)", [(30,)], returning=True)
            n = conn.execute(f"select count(*) from {table}").fetchone()[0]
            if n != 15:
                FAILURES.append(f"{what}: {n} rows, expected 15")
    except Exception as e:  # noqa: BLE001 - every failure is reported
        FAILURES.append(f"{what}: {type(e).__name__}: {e}")


run("temp table (pinned session)", "t", "create temp table t (id int)")
run("plain table", "pipeline_names", "create table if not exists pipeline_names (id int)")
for f in FAILURES:
    print(f)
sys.exit(1 if FAILURES else 0)
