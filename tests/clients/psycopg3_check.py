#!/usr/bin/env python3
"""psycopg 3 through pgfleet: every check asserts the result and which node served it.

Usage: psycopg3_check.py DSN PRIMARY_PORT REPLICA_PORT [REPLICA_PORT...]

DSN points at pgfleet (user app, database app). Run by tests/client_drivers.rs. Each section runs on its
own connections; a failing section is reported and the others still run. Exits 0 only if every check
passed, 1 otherwise, printing one line per failed check.

pgfleet's read-your-writes (routing.read_your_writes = "session", the default) sends a session's reads to
the primary until a replica has replayed that session's last write. So a check that a read ran on a replica
either uses a session that has not written, or first waits for the replicas (`wait_replicas_see`, on a
fresh connection) and for the session's reads to come back to them (`settle`).
"""

import signal
import sys
import threading
import time
import traceback

try:
    import psycopg
    from psycopg import errors
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"psycopg (3) is not installed: {e}; run scripts/install-test-deps.sh", file=sys.stderr)
    sys.exit(2)

DSN = sys.argv[1]
PRIMARY = int(sys.argv[2])
REPLICAS = {int(p) for p in sys.argv[3:]}
FAILURES = []
# A section stuck longer than this (a lost reply through the proxy) is reported and abandoned.
SECTION_TIMEOUT = 20


class SectionTimeout(Exception):
    pass


def on_alarm(signum, frame):
    signal.alarm(5)  # cleanup of the stuck connection may block again: interrupt that too
    raise SectionTimeout(f"no answer within {SECTION_TIMEOUT}s (hung waiting for the server through pgfleet)")


signal.signal(signal.SIGALRM, on_alarm)


class CheckFailed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def connect(**kwargs):
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(DSN, connect_timeout=10, **kwargs)


def port(conn):
    return conn.execute("SELECT inet_server_port()").fetchone()[0]


def on_replica(p, what):
    check(p in REPLICAS, f"{what}: served by port {p}, expected a replica {sorted(REPLICAS)}")


def on_primary(p, what):
    check(p == PRIMARY, f"{what}: served by port {p}, expected the primary {PRIMARY}")


def wait_replicas_see(query, params, expected, what, timeout=15.0):
    """Reads `query` through pgfleet, on a fresh session that never wrote, until every replica has answered
    `expected`. Under the default `global` consistency a read that no replica has caught up with yet is
    answered by the primary, so primary answers are allowed here but count for nothing."""
    last = {}
    deadline = time.monotonic() + timeout
    with connect() as reader:
        while time.monotonic() < deadline:
            p, value = reader.execute(f"SELECT inet_server_port(), ({query})", params).fetchone()
            check(p in REPLICAS or p == PRIMARY, f"{what}: served by unknown port {p}")
            if p in REPLICAS:
                last[p] = value
            if set(last) == REPLICAS and all(v == expected for v in last.values()):
                return
            time.sleep(0.05)
    raise CheckFailed(f"{what}: replicas did not all answer {expected!r} within {timeout}s: {last}")


def settle(conn, what, timeout=10.0):
    """After a session wrote: waits until its reads are served by replicas again (read-your-writes lets
    them go to the primary until a replica has replayed the write)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = port(conn)
        if p in REPLICAS:
            return
        seen.append(p)
        time.sleep(0.05)
    raise CheckFailed(f"{what}: reads never came back to a replica within {timeout}s (ports {seen[-5:]})")


def section(fn):
    name = fn.__name__
    started = time.monotonic()
    signal.alarm(SECTION_TIMEOUT)
    try:
        try:
            fn()
        finally:
            signal.alarm(0)
        print(f"ok    {name} ({time.monotonic() - started:.2f}s)")
    except CheckFailed as e:
        FAILURES.append(f"{name}: {e}")
        print(f"FAIL  {name}: {e}")
    except Exception as e:  # an unexpected driver/server error (or a hang) is a failed check too
        FAILURES.append(f"{name}: unexpected {type(e).__name__}: {e}")
        print(f"FAIL  {name}: unexpected {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        signal.alarm(0)
    return fn


@section
def setup_and_routing():
    with connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int)")
        seen = set()
        for _ in range(6):
            # The port tells the node: pg_is_in_recovery() is answered by the primary through pgfleet.
            (p,) = conn.execute("SELECT inet_server_port()").fetchone()
            on_replica(p, "autocommit SELECT")
            seen.add(p)
        check(seen == REPLICAS, f"round robin reads should use both replicas, saw {seen}")
        # Questions about the server's role get the primary's answer, like the greeting libpq keeps.
        in_recovery, p = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
        check(in_recovery is False and p == PRIMARY, f"pg_is_in_recovery() = {in_recovery} on port {p}")
        hot = conn.info.parameter_status("in_hot_standby")
        check(hot == "off", f"the greeting's in_hot_standby = {hot!r}")
        # Server-side binding: psycopg 3 sends $1.. parameters with the extended protocol.
        row = conn.execute(
            "SELECT %s::int + %s, %s::text || 'x', %s::text IS NULL, inet_server_port()", (40, 2, "y", None)
        ).fetchone()
        check(row[:3] == (42, "yx", True), f"bound parameters: {row}")
        on_replica(row[3], "SELECT with bound parameters")
        row = conn.execute(
            "INSERT INTO items VALUES (%s, %s, %s) RETURNING id, name, inet_server_port()", (1, "one", 10)
        ).fetchone()
        check(row[:2] == (1, "one"), f"INSERT RETURNING gave {row}")
        on_primary(row[2], "INSERT ... RETURNING")
        # Writes by function or lock clause.
        on_primary(conn.execute("SELECT inet_server_port() FROM items WHERE id = %s FOR UPDATE", (1,))
                   .fetchone()[0], "SELECT ... FOR UPDATE")


@section
def executemany():
    with connect() as conn:
        cur = conn.cursor()
        # psycopg 3 runs executemany in pipeline mode: Parse/Bind/Describe/Execute per row, then Sync, Flush.
        rows = [(i, f"many {i}", i) for i in range(100, 200)]
        cur.executemany("INSERT INTO items (id, name, qty) VALUES (%s, %s, %s)", rows)
        check(cur.rowcount == 100, f"executemany rowcount {cur.rowcount}")
        with conn.transaction():
            count, p = conn.execute("SELECT count(*), inet_server_port() FROM items WHERE id BETWEEN 100 AND 199"
                                    ).fetchone()
        check(count == 100, f"rows written by executemany, read in a transaction: {count}")
        on_primary(p, "read inside a transaction")
        wait_replicas_see("SELECT count(*) FROM items WHERE id BETWEEN 100 AND 199", None, 100,
                          "replicated executemany")


@section
def executemany_twice():
    # The second pipeline of a session follows the first one's trailing Flush.
    with connect() as conn:
        cur = conn.cursor()
        cur.executemany("INSERT INTO items (id, name, qty) VALUES (%s, %s, %s)",
                        [(i, f"twice {i}", i) for i in range(200, 205)])
        cur.executemany(
            "INSERT INTO items (id, name, qty) VALUES (%s, %s, %s) RETURNING inet_server_port()",
            [(i, f"ret {i}", i) for i in range(205, 210)],
            returning=True,
        )
        ports = []
        while True:
            ports.append(cur.fetchone()[0])
            if not cur.nextset():
                break
        check(len(ports) == 5, f"executemany returning: {len(ports)} result sets")
        for p in ports:
            on_primary(p, "second executemany ... RETURNING")


@section
def pipeline():
    with connect() as conn:
        conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (210, "pipe", 100))
        # Explicit pipeline mode without a sync point: one implicit transaction, so one node, the primary.
        with conn.pipeline():
            c1 = conn.execute("SELECT inet_server_port(), 1")
            c2 = conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s RETURNING qty, inet_server_port()",
                              (210,))
            c3 = conn.execute("SELECT inet_server_port(), 3")
        r1, r2, r3 = c1.fetchone(), c2.fetchone(), c3.fetchone()
        check(r2[0] == 101, f"pipelined update returned {r2}")
        for what, p in (("read 1", r1[0]), ("UPDATE", r2[1]), ("read 2", r3[0])):
            on_primary(p, f"unsynced pipeline with a write, {what}")
        wait_replicas_see("SELECT qty FROM items WHERE id = 210", None, 101, "replicated pipeline update")
        settle(conn, "after the unsynced pipeline")
        # With a Sync after each statement, every statement is routed on its own while all are in flight.
        with conn.pipeline() as pl:
            c1 = conn.execute("SELECT inet_server_port(), 1")
            pl.sync()
            c2 = conn.execute("SELECT inet_server_port(), 2")
            pl.sync()
            c3 = conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s RETURNING qty, inet_server_port()",
                              (210,))
            pl.sync()
        r1, r2, r3 = c1.fetchone(), c2.fetchone(), c3.fetchone()
        on_replica(r1[0], "synced pipeline, read 1")
        on_replica(r2[0], "synced pipeline, read 2")
        check(r3[0] == 102, f"pipelined update returned {r3}")
        on_primary(r3[1], "synced pipeline, UPDATE")
        # After the pipeline (which ends with Sync, Flush), a plain write still goes to the primary.
        p = conn.execute("UPDATE items SET qty = qty + 1 WHERE id = %s RETURNING inet_server_port()",
                         (210,)).fetchone()[0]
        on_primary(p, "UPDATE after a pipeline")
        wait_replicas_see("SELECT qty FROM items WHERE id = 210", None, 103, "replicated pipeline updates")


@section
def pipeline_repeated():
    # The same statements pipelined again and again: psycopg prepares them (_pg3_N) after 5 executions,
    # inside the pipeline, so a later Bind must find its statement on whichever replica runs it.
    with connect() as conn:
        ports = set()
        for i in range(10):
            with conn.pipeline() as pl:
                c1 = conn.execute("SELECT inet_server_port(), %s::int", (i,))
                pl.sync()
                c2 = conn.execute("SELECT inet_server_port(), %s::int * 10", (i,))
                pl.sync()
            (p1, v1), (p2, v2) = c1.fetchone(), c2.fetchone()
            check((v1, v2) == (i, i * 10), f"iteration {i}: {v1}, {v2}")
            on_replica(p1, f"pipelined read, iteration {i}")
            on_replica(p2, f"pipelined read, iteration {i}")
            ports.update((p1, p2))
        check(ports == REPLICAS, f"pipelined reads should use both replicas: {ports}")


@section
def prepared_statements():
    with connect() as conn:
        ports = []
        for i in range(12):
            p, v = conn.execute("SELECT inet_server_port(), %s::int * 2", (i,), prepare=True).fetchone()
            check(v == 2 * i, f"prepared execution {i} returned {v}")
            ports.append(p)
        for p in ports:
            on_replica(p, "prepared SELECT")
        check(set(ports) == REPLICAS, f"a named prepared statement should run on both replicas: {ports}")
        # Automatic preparation after prepare_threshold executions, for a write: always the primary.
        conn.prepare_threshold = 1
        for i in range(6):
            p = conn.execute(
                "INSERT INTO items VALUES (%s, 'prep', 0) RETURNING inet_server_port()", (300 + i,)
            ).fetchone()[0]
            on_primary(p, f"auto-prepared INSERT #{i}")
        # Prepared statements survive a transaction on the primary and keep working on replicas after it.
        with conn.transaction():
            p, v = conn.execute("SELECT inet_server_port(), %s::int * 2", (50,), prepare=True).fetchone()
            on_primary(p, "prepared SELECT inside a transaction")
            check(v == 100, f"prepared in transaction: {v}")
        wait_replicas_see("SELECT count(*) FROM items WHERE name = 'prep'", None, 6, "replicated prepared inserts")
        settle(conn, "after the prepared inserts")
        for i in range(4):
            p, v = conn.execute("SELECT inet_server_port(), %s::int * 2", (i,), prepare=True).fetchone()
            check(v == 2 * i, f"prepared after transaction: {v}")
            on_replica(p, "prepared SELECT after a transaction")


@section
def transactions():
    with connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (400, 'tx', 1)")
            row = conn.execute("SELECT name, inet_server_port() FROM items WHERE id = 400").fetchone()
            check(row is not None and row[0] == "tx", f"transaction reads its own write: {row}")
            on_primary(row[1], "read in a read-write transaction")
        with conn.transaction() as tx:
            conn.execute("INSERT INTO items VALUES (401, 'rolled back', 1)")
            raise psycopg.Rollback(tx)
        with conn.transaction():
            gone = conn.execute("SELECT count(*) FROM items WHERE id = 401").fetchone()[0]
        check(gone == 0, "rolled-back insert is gone")
        # A savepoint rolled back inside a transaction.
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (402, 'outer', 1)")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO items VALUES (402, 'dup', 1)")
            except errors.UniqueViolation:
                pass
            row = conn.execute("SELECT name, inet_server_port() FROM items WHERE id = 402").fetchone()
            check(row[0] == "outer", f"after the failed savepoint: {row}")
            on_primary(row[1], "read after ROLLBACK TO SAVEPOINT")
    # Non-autocommit connection: psycopg sends BEGIN before the first statement, so all of it is primary.
    with connect(autocommit=False) as conn:
        on_primary(port(conn), "SELECT in an implicit (non-autocommit) transaction")
        conn.execute("UPDATE items SET qty = 99 WHERE id = 400")
        qty = conn.execute("SELECT qty FROM items WHERE id = 400").fetchone()[0]
        check(qty == 99, f"non-autocommit transaction sees its update: {qty}")
        conn.commit()
        wait_replicas_see("SELECT qty FROM items WHERE id = 400", None, 99, "replicated update")
        # A read-only session: BEGIN READ ONLY may run on a replica, one backend for the whole transaction.
        conn.read_only = True
        deadline = time.monotonic() + 10
        while port(conn) not in REPLICAS and time.monotonic() < deadline:  # read-your-writes, see above
            conn.rollback()
            time.sleep(0.05)
        conn.rollback()
        ports = {port(conn) for _ in range(3)}
        check(len(ports) == 1, f"read-only transaction used several backends: {ports}")
        on_replica(ports.pop(), "read-only transaction (conn.read_only = True)")
        try:
            conn.execute("INSERT INTO items VALUES (403, 'ro', 1)")
            raise CheckFailed("INSERT in a READ ONLY transaction succeeded")
        except errors.ReadOnlySqlTransaction as e:
            check(e.sqlstate == "25006", f"sqlstate {e.sqlstate}")
        conn.rollback()


@section
def copy():
    with connect() as conn:
        cur = conn.cursor()
        with cur.copy("COPY items (id, name, qty) FROM STDIN") as cp:
            for i in range(1000, 1500):
                cp.write_row((i, f"copied\t{i}", i % 7))
        check(cur.rowcount == 500, f"COPY FROM STDIN rowcount {cur.rowcount}")
        # Binary COPY FROM.
        with cur.copy("COPY items (id, name, qty) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "int4"])
            for i in range(1500, 1600):
                cp.write_row((i, f"binary {i}", None))
        check(cur.rowcount == 100, f"binary COPY FROM STDIN rowcount {cur.rowcount}")
        wait_replicas_see("SELECT count(*) FROM items WHERE id >= 1000 AND id < 1600", None, 600,
                          "replicated COPY")
        settle(conn, "after COPY FROM")
        rows = []
        with cur.copy(
            "COPY (SELECT id, name, qty, inet_server_port() FROM items WHERE id >= 1000 ORDER BY id) TO STDOUT"
        ) as cp:
            cp.set_types(["int4", "text", "int4", "int4"])
            rows = list(cp.rows())
        check(len(rows) == 600, f"COPY TO STDOUT returned {len(rows)} rows")
        check(rows[0][:3] == (1000, "copied\t1000", 1000 % 7), f"first copied row {rows[0]}")
        check(rows[-1][:3] == (1599, "binary 1599", None), f"last copied row {rows[-1]}")
        ports = {r[3] for r in rows}
        check(len(ports) == 1, f"one COPY, one node: {ports}")
        on_replica(ports.pop(), "COPY (SELECT) TO STDOUT")
        # Raw COPY TO in binary format.
        data = b""
        with cur.copy("COPY (SELECT id FROM items WHERE id BETWEEN 1000 AND 1009) TO STDOUT (FORMAT BINARY)") as cp:
            for chunk in cp:
                data += bytes(chunk)
        check(data.startswith(b"PGCOPY\n\xff\r\n\x00"), f"binary COPY header: {data[:11]!r}")


@section
def binary_cursor():
    import datetime
    import decimal
    with connect() as conn:
        cur = conn.cursor(binary=True)
        row = cur.execute(
            "SELECT 1.5::float8, 'x\\000y'::bytea, ARRAY[1,2,NULL]::int4[], true, 12345678901::int8, "
            "'12.345'::numeric, '2024-02-29'::date, '{\"a\": [1, 2]}'::jsonb, 'héllo'::text, "
            "inet_server_port(), %s::int",
            (7,),
        ).fetchone()
        expected = (1.5, b"x\x00y", [1, 2, None], True, 12345678901, decimal.Decimal("12.345"),
                    datetime.date(2024, 2, 29), {"a": [1, 2]}, "héllo")
        check(row[:9] == expected, f"binary results: {row[:9]} != {expected}")
        check(row[10] == 7, f"binary parameter: {row[10]}")
        on_replica(row[9], "binary cursor SELECT")
        cur.execute("SELECT id, name FROM items WHERE id BETWEEN 100 AND 109 ORDER BY id")
        got = cur.fetchall()
        check(got == [(i, f"many {i}") for i in range(100, 110)], f"binary rows: {got}")
        row = cur.execute("INSERT INTO items VALUES (%s, %s, %s) RETURNING id, inet_server_port()",
                          (500, "bin", 5)).fetchone()
        check(row[0] == 500, f"binary INSERT RETURNING {row}")
        on_primary(row[1], "binary cursor INSERT")


@section
def listen_notify():
    with connect() as listener, connect() as sender:
        listener.execute("LISTEN fleet_ch")
        on_primary(port(listener), "a LISTENing session")
        sender.execute("NOTIFY fleet_ch, 'first'")
        sender.execute("SELECT pg_notify('fleet_ch', %s)", ("second",))
        listener.execute("NOTIFY fleet_ch, 'self'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5.0, stop_after=3)]
        want = [("fleet_ch", "first"), ("fleet_ch", "second"), ("fleet_ch", "self")]
        check(sorted(got) == sorted(want), f"notifications received: {got}, expected {want}")
        # Delivered while the listener is idle in another thread's wait.
        received = []

        def wait_one():
            received.extend(listener.notifies(timeout=5.0, stop_after=1))

        t = threading.Thread(target=wait_one)
        t.start()
        time.sleep(0.3)
        sender.execute("NOTIFY fleet_ch, 'idle'")
        t.join(10)
        check([n.payload for n in received] == ["idle"], f"idle notification: {received}")
        listener.execute("UNLISTEN fleet_ch")
        sender.execute("NOTIFY fleet_ch, 'unheard'")
        late = list(listener.notifies(timeout=0.5))
        check(late == [], f"after UNLISTEN nothing arrives: {late}")


@section
def error_fields():
    with connect() as conn:
        try:
            conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (1, "dup", 0))
            raise CheckFailed("duplicate insert succeeded")
        except errors.UniqueViolation as e:
            check(e.sqlstate == "23505", f"sqlstate {e.sqlstate}")
            check(e.diag.sqlstate == "23505", f"diag.sqlstate {e.diag.sqlstate}")
            check(e.diag.severity == "ERROR", f"severity {e.diag.severity}")
            check(e.diag.message_primary == 'duplicate key value violates unique constraint "items_pkey"',
                  f"message_primary {e.diag.message_primary!r}")
            check(e.diag.message_detail == "Key (id)=(1) already exists.",
                  f"message_detail {e.diag.message_detail!r}")
            check(e.diag.constraint_name == "items_pkey", f"constraint_name {e.diag.constraint_name!r}")
            check(e.diag.table_name == "items", f"table_name {e.diag.table_name!r}")
            check(e.diag.schema_name == "public", f"schema_name {e.diag.schema_name!r}")
        # A NOT NULL violation names the column.
        try:
            conn.execute("INSERT INTO items VALUES (%s, NULL, 0)", (9999,))
            raise CheckFailed("NULL insert succeeded")
        except errors.NotNullViolation as e:
            check(e.diag.column_name == "name", f"column_name {e.diag.column_name!r}")
        # A syntax error carries its position; the session carries on afterwards on a replica.
        try:
            conn.execute("SELEC 1")
            raise CheckFailed("syntax error accepted")
        except errors.SyntaxError as e:
            check(e.sqlstate == "42601" and e.diag.statement_position == "1",
                  f"syntax error {e.sqlstate} at {e.diag.statement_position}")
        settle(conn, "reads after errors")
        # Notices arrive through the notice handler.
        notices = []
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        conn.execute("DO $$BEGIN RAISE NOTICE 'hello %', 1; END$$")
        check(notices == [("NOTICE", "hello 1")], f"notices: {notices}")


def cancel_during(run, cancel, where):
    """Runs `run` (a pg_sleep(10)) and calls `cancel` from another thread after 1 s."""
    timer = threading.Timer(1.0, cancel)
    started = time.monotonic()
    timer.start()
    try:
        run()
        raise CheckFailed(f"{where}: pg_sleep(10) was not cancelled")
    except errors.QueryCanceled as e:
        elapsed = time.monotonic() - started
        check(e.sqlstate == "57014", f"{where}: sqlstate {e.sqlstate}")
        check(elapsed < 5.0, f"{where}: cancelled only after {elapsed:.1f}s")
    finally:
        timer.cancel()


@section
def cancel():
    with connect() as conn:
        def sleep():
            conn.execute("SELECT pg_sleep(10)")

        def sleep_in_savepoint():
            with conn.transaction():
                conn.execute("SELECT pg_sleep(10)")

        cancel_during(sleep, conn.cancel, "conn.cancel() on a replica read")
        on_replica(port(conn), "read after a cancel")
        if hasattr(conn, "cancel_safe"):
            cancel_during(sleep, conn.cancel_safe, "conn.cancel_safe() on a replica read")
            on_replica(port(conn), "read after cancel_safe()")
        with conn.transaction(force_rollback=True):
            on_primary(port(conn), "transaction before a cancel")
            cancel_during(sleep_in_savepoint, conn.cancel, "conn.cancel() inside a transaction (primary)")
            on_primary(port(conn), "transaction after a cancelled savepoint")
        value = conn.execute("SELECT 41 + 1").fetchone()[0]
        check(value == 42, f"connection usable after cancels: {value}")


if FAILURES:
    print(f"\n{len(FAILURES)} psycopg 3 check(s) failed:", file=sys.stderr)
    for f in FAILURES:
        print(f"  - {f}", file=sys.stderr)
    sys.exit(1)
print("all psycopg 3 checks passed")
