#!/usr/bin/env python3
"""psycopg 3 or psycopg2 through a sharded pgfleet (two shards, `accounts` sharded by `id`).

Usage: sharded_psycopg.py MODULE DSN ID_ON_SHARD_0 ID_ON_SHARD_1 SHARD_0_IDS

MODULE is `psycopg` (psycopg 3: server-side parameters over the extended protocol, statements prepared
server-side from their fifth execution, executemany in pipeline mode) or `psycopg2` (parameters bound by the
client, simple query protocol). The two ids are accounts on different shards (the Rust test computes them with
pgfleet's placement), SHARD_0_IDS the comma-separated ids of 101..140 on shard 0. The program creates `accounts` and the reference table `branches` through pgfleet and
checks every answer it gets; the Rust test then checks on each shard primary where the rows landed. Ids used:
1..40 (single-row inserts), 101..130 (executemany), 131..140 (psycopg2's execute_values), 201..260 (COPY).

Each section prints `ok NAME` or `FAIL NAME: why`; a documented refusal of pgfleet's prints `FINDING`. Exits 0
only if every check passed.
"""

import contextlib
import decimal
import importlib
import io
import sys
import traceback

MODULE = sys.argv[1]
DSN = sys.argv[2]
A = int(sys.argv[3])
B = int(sys.argv[4])
# The ids of 101..140 that belong to shard 0 (the rest are on shard 1).
SHARD_OF_0 = {int(i) for i in sys.argv[5].split(",")}
FAILURES = []

try:
    db = importlib.import_module(MODULE)
    errors = importlib.import_module(MODULE + ".errors")
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"{MODULE} is not installed: {e}; run scripts/install-test-deps.sh", file=sys.stderr)
    sys.exit(2)

PSYCOPG3 = MODULE == "psycopg"
D = decimal.Decimal


class CheckFailed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def connect(autocommit=True):
    """A connection to use in `with`, closed at its end. Not the connection's own context manager: psycopg2's
    opens a transaction even on an autocommit connection (2.9), and psycopg 3's commits at exit."""
    conn = db.connect(DSN, connect_timeout=10)
    conn.autocommit = autocommit
    return contextlib.closing(conn)


def sqlstate(e):
    return e.sqlstate if PSYCOPG3 else e.pgcode


def primary_message(e):
    return e.diag.message_primary


def section(fn):
    try:
        fn()
        print(f"ok    {fn.__name__}", flush=True)
    except CheckFailed as e:
        FAILURES.append(f"{fn.__name__}: {e}")
        print(f"FAIL  {fn.__name__}: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 - every unexpected error is a failed section
        FAILURES.append(f"{fn.__name__}: unexpected {type(e).__name__}: {e}")
        print(f"FAIL  {fn.__name__}: unexpected {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()
    return fn


def one_row(cur, sql, params=None):
    cur.execute(sql, params)
    rows = cur.fetchall()
    check(len(rows) == 1, f"{sql} {params}: {len(rows)} rows, expected one: {rows}")
    return tuple(rows[0])


def balances(cur):
    a = one_row(cur, "SELECT balance FROM accounts WHERE id = %s", (A,))[0]
    b = one_row(cur, "SELECT balance FROM accounts WHERE id = %s", (B,))[0]
    return (a, b)


@section
def ddl():
    with connect() as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0)"
        )
        cur.execute("CREATE TABLE branches (id int PRIMARY KEY, name text NOT NULL)")


@section
def inserts_and_reads_by_key():
    with connect() as conn:
        cur = conn.cursor()
        for i in range(1, 41):
            cur.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)", (i, f"o{i}", D(100)))
            check(cur.rowcount == 1, f"insert {i}: rowcount {cur.rowcount}")
        cur.execute("INSERT INTO branches (id, name) VALUES (%s, %s)", (1, "north"))
        check(cur.rowcount == 1, f"reference insert: rowcount {cur.rowcount}")
        cur.execute("INSERT INTO branches (id, name) VALUES (%s, %s)", (2, "south"))
        for i in range(1, 41):
            row = one_row(cur, "SELECT id, owner, balance FROM accounts WHERE id = %s", (i,))
            check(row == (i, f"o{i}", D(100)), f"read of {i}: {row}")
        row = one_row(cur, "SELECT name FROM branches WHERE id = %s", (2,))
        check(row == ("south",), f"reference read: {row}")
        # A join of the sharded table with the reference table, pinned by the key.
        row = one_row(
            cur,
            "SELECT a.owner, b.name FROM accounts a JOIN branches b ON b.id = %s WHERE a.id = %s",
            (1, B),
        )
        check(row == (f"o{B}", "north"), f"join with the reference table: {row}")


@section
def transactions_across_shards():
    with connect(autocommit=False) as conn:
        cur = conn.cursor()
        # Committed: both updates applied.
        cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (D(10), A))
        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (D(10), B))
        check(balances(cur) == (D(90), D(110)), f"inside the transaction: {balances(cur)}")
        conn.commit()
        check(balances(cur) == (D(90), D(110)), f"after commit: {balances(cur)}")
        conn.commit()
        # Rolled back: neither.
        cur.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (A,))
        cur.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (B,))
        conn.rollback()
        check(balances(cur) == (D(90), D(110)), f"after rollback: {balances(cur)}")
        conn.rollback()
        # An error on the second shard fails the whole transaction, as PostgreSQL's would.
        cur.execute("UPDATE accounts SET balance = 1 WHERE id = %s", (A,))
        try:
            cur.execute("UPDATE accounts SET balance = 1 / 0 WHERE id = %s", (B,))
            raise CheckFailed("division by zero on the second shard succeeded")
        except errors.DivisionByZero as e:
            check(sqlstate(e) == "22012", f"error sqlstate {sqlstate(e)}")
        try:
            cur.execute("UPDATE accounts SET balance = 2 WHERE id = %s", (A,))
            raise CheckFailed("a statement after the error succeeded")
        except errors.InFailedSqlTransaction as e:
            check(sqlstate(e) == "25P02", f"after the error: sqlstate {sqlstate(e)}")
        # COMMIT of a failed transaction rolls back (PostgreSQL answers ROLLBACK, the drivers do not raise).
        conn.commit()
        check(balances(cur) == (D(90), D(110)), f"after commit of a failed transaction: {balances(cur)}")
        conn.rollback()
        # The same with an explicit rollback.
        cur.execute("UPDATE accounts SET balance = 1 WHERE id = %s", (B,))
        try:
            cur.execute("UPDATE accounts SET owner = NULL WHERE id = %s", (A,))
            raise CheckFailed("NOT NULL violation on the other shard succeeded")
        except errors.NotNullViolation as e:
            check(sqlstate(e) == "23502", f"error sqlstate {sqlstate(e)}")
        conn.rollback()
        check(balances(cur) == (D(90), D(110)), f"after rollback of a failed transaction: {balances(cur)}")
        conn.rollback()


# Cross-shard reads, each executed 8 times with a bound parameter: psycopg 3 prepares a statement server-side
# once it ran it prepare_threshold (5) times. Rows 1..40 hold balance 100 except A (90) and B (110).
CROSS_READS = [
    ("count and sum", "SELECT count(*), sum(balance) FROM accounts WHERE balance >= %s", [(40, D(4000))]),
    (
        "order by limit",
        "SELECT id, owner FROM accounts WHERE balance >= %s ORDER BY id DESC LIMIT 3",
        [(40, "o40"), (39, "o39"), (38, "o38")],
    ),
    ("min max", "SELECT min(balance), max(balance) FROM accounts WHERE balance >= %s", [(D(90), D(110))]),
    ("avg", "SELECT avg(balance) FROM accounts WHERE balance >= %s", [(D(100),)]),
    (
        "order by limit offset",
        "SELECT id FROM accounts WHERE balance >= %s ORDER BY id LIMIT 2 OFFSET 3",
        [(4,), (5,)],
    ),
]
REFUSAL = (
    "pgfleet: this query across shards needs each shard to run a rewritten statement, which pgfleet cannot do "
    "for a statement prepared in an earlier request"
)


@section
def reads_across_shards():
    with connect() as conn:
        cur = conn.cursor()
        report = []
        for name, sql, want in CROSS_READS:
            outcomes = []
            for _ in range(8):
                try:
                    cur.execute(sql, (0,))
                    got = [tuple(r) for r in cur.fetchall()]
                    outcomes.append("ok" if got == want else f"WRONG {got}")
                except errors.FeatureNotSupported as e:
                    outcomes.append("refused" if primary_message(e) == REFUSAL else f"refused: {primary_message(e)}")
                    if not PSYCOPG3:
                        conn.rollback()
            report.append(f"{name}: {outcomes}")
        print("      " + "\n      ".join(report), flush=True)
        wrong = [r for r in report if "WRONG" in r or "refused:" in r]
        check(not wrong, f"wrong answers or unexpected refusals: {wrong}")
        # Every execution answered, also past psycopg 3's prepare threshold, when it Binds a statement it
        # prepared in an earlier request: pgfleet parses the rewritten text for the merge as the unnamed
        # statement on each shard.
        refused = [r for r in report if "refused" in r]
        check(not refused, f"refused: {refused}")


@section
def executemany():
    with connect() as conn:
        cur = conn.cursor()
        insert = "INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)"
        rows = [(i, f"m{i}", D(i)) for i in range(101, 131)]
        if PSYCOPG3:
            # psycopg 3 sends executemany as one pipeline: every row's Bind/Execute, then one Sync (one
            # implicit transaction in PostgreSQL). pgfleet runs each row on its shard inside one transaction
            # across them, committed at the Sync.
            first = [r for r in rows if r[0] <= 115]
            cur.executemany(insert, first)
            got = one_row(cur, "SELECT count(*) FROM accounts WHERE id BETWEEN %s AND %s", (101, 115))
            check(got == (15,), f"rows written by executemany over both shards: {got}")
            # The rows of one shard at a time go through executemany; the whole set in one transaction.
            rest = [r for r in rows if r[0] > 115]
            with conn.transaction():
                for shard_rows in (
                    [r for r in rest if r[0] in SHARD_OF_0],
                    [r for r in rest if r[0] not in SHARD_OF_0],
                ):
                    cur.executemany(insert, shard_rows)
        else:
            # psycopg2 runs one simple query per row.
            cur.executemany(insert, rows)
            check(cur.rowcount == 30, f"executemany rowcount {cur.rowcount}")
        got = one_row(cur, "SELECT count(*), sum(balance) FROM accounts WHERE id BETWEEN %s AND %s", (101, 130))
        check(got == (30, D(sum(range(101, 131)))), f"rows written by executemany: {got}")
        for i in (101, 117, 130):
            row = one_row(cur, "SELECT owner FROM accounts WHERE id = %s", (i,))
            check(row == (f"m{i}",), f"read of {i}: {row}")
    if not PSYCOPG3:
        # A transaction of executemany rows over both shards that fails midway (a duplicate key): nothing kept.
        with connect(autocommit=False) as conn:
            cur = conn.cursor()
            try:
                cur.executemany(insert, [(131, "x", 0), (132, "x", 0), (133, "x", 0), (101, "dup", 0)])
                raise CheckFailed("executemany with a duplicate key succeeded")
            except errors.UniqueViolation as e:
                check(sqlstate(e) == "23505", f"sqlstate {sqlstate(e)}")
            conn.rollback()
            got = one_row(cur, "SELECT count(*) FROM accounts WHERE id BETWEEN %s AND %s", (131, 133))
            check(got == (0,), f"rows of the failed executemany: {got}")
            conn.rollback()
            # One multi-row INSERT (psycopg2.extras.execute_values) split over the shards, atomically.
            extras = importlib.import_module("psycopg2.extras")
            extras.execute_values(cur, "INSERT INTO accounts (id, owner) VALUES %s", [(i, "v") for i in range(131, 141)])
            conn.commit()
            got = one_row(cur, "SELECT count(*) FROM accounts WHERE id BETWEEN %s AND %s", (131, 140))
            check(got == (10,), f"rows of execute_values: {got}")
            conn.commit()


@section
def copy_from_stdin():
    with connect() as conn:
        cur = conn.cursor()
        ids = range(201, 261)
        if PSYCOPG3:
            with cur.copy("COPY accounts (id, owner) FROM STDIN") as cp:
                for i in ids:
                    cp.write_row((i, f"c{i}"))
        else:
            data = io.StringIO("".join(f"{i}\tc{i}\n" for i in ids))
            cur.copy_expert("COPY accounts (id, owner) FROM STDIN", data)
        check(cur.rowcount == 60, f"COPY rowcount {cur.rowcount}")
        got = one_row(cur, "SELECT count(*), sum(balance) FROM accounts WHERE id BETWEEN %s AND %s", (201, 260))
        check(got == (60, D(0)), f"rows copied: {got}")
        row = one_row(cur, "SELECT owner FROM accounts WHERE id = %s", (233,))
        check(row == ("c233",), f"copied row 233: {row}")


if FAILURES:
    print(f"\n{len(FAILURES)} sharded {MODULE} check(s) failed:", file=sys.stderr)
    for f in FAILURES:
        print(f"  - {f}", file=sys.stderr)
    sys.exit(1)
print(f"all sharded {MODULE} checks passed")
