#!/usr/bin/env python3
"""psycopg2 through pgfleet: every check asserts the result and which node served it.

Usage: psycopg2_check.py DSN PRIMARY_PORT REPLICA_PORT [REPLICA_PORT...]

psycopg2 binds parameters client-side and speaks the simple query protocol only (libpq PQexec), so this
complements psycopg3_check.py. Run by tests/client_drivers.rs. Each section runs on its own connections; a
failing section is reported and the others still run. Exits 0 only if every check passed.

pgfleet's read-your-writes (routing.read_your_writes = "session", the default) sends a session's reads to
the primary until a replica has replayed that session's last write. So a check that a read ran on a replica
either uses a session that has not written, or first waits for the replicas (`wait_replicas_see`, on a
fresh connection) and for the session's reads to come back to them (`settle`).
"""

import io
import select
import signal
import sys
import threading
import time
import traceback

try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    import psycopg2.extras
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"psycopg2 is not installed: {e}; run scripts/install-test-deps.sh", file=sys.stderr)
    sys.exit(2)

DSN = sys.argv[1]
PRIMARY = int(sys.argv[2])
REPLICAS = {int(p) for p in sys.argv[3:]}
FAILURES = []
SECTION_TIMEOUT = 20


class CheckFailed(Exception):
    pass


class SectionTimeout(Exception):
    pass


def on_alarm(signum, frame):
    signal.alarm(5)
    raise SectionTimeout(f"no answer within {SECTION_TIMEOUT}s (hung waiting for the server through pgfleet)")


signal.signal(signal.SIGALRM, on_alarm)


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def connect(autocommit=True):
    conn = psycopg2.connect(DSN, connect_timeout=10)
    conn.autocommit = autocommit
    return conn


def one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def port(conn):
    return one(conn, "SELECT inet_server_port()")[0]


def on_replica(p, what):
    check(p in REPLICAS, f"{what}: served by port {p}, expected a replica {sorted(REPLICAS)}")


def on_primary(p, what):
    check(p == PRIMARY, f"{what}: served by port {p}, expected the primary {PRIMARY}")


def wait_replicas_see(query, expected, what, timeout=15.0):
    """Reads `query` through pgfleet, on a fresh session that never wrote, until every replica has answered
    `expected`. Under the default `global` consistency a read that no replica has caught up with yet is
    answered by the primary, so primary answers are allowed here but count for nothing."""
    last = {}
    deadline = time.monotonic() + timeout
    reader = connect()
    try:
        while time.monotonic() < deadline:
            p, value = one(reader, f"SELECT inet_server_port(), ({query})")
            check(p in REPLICAS or p == PRIMARY, f"{what}: served by unknown port {p}")
            if p in REPLICAS:
                last[p] = value
            if set(last) == REPLICAS and all(v == expected for v in last.values()):
                return
            time.sleep(0.05)
    finally:
        reader.close()
    raise CheckFailed(f"{what}: replicas did not all answer {expected!r} within {timeout}s: {last}")


def settle(conn, what, timeout=10.0):
    """After a session wrote: waits until its reads are served by replicas again (read-your-writes lets
    them go to the primary until a replica has replayed the write). For autocommit connections, or with
    `rollback` for a session in transaction mode."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = port(conn)
        if not conn.autocommit:
            conn.rollback()
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
    except Exception as e:
        FAILURES.append(f"{name}: unexpected {type(e).__name__}: {e}")
        print(f"FAIL  {name}: unexpected {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        signal.alarm(0)
    return fn


@section
def setup_and_routing():
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int)")
        seen = set()
        for _ in range(6):
            # The port tells the node: pg_is_in_recovery() is answered by the primary through pgfleet.
            (p,) = one(conn, "SELECT inet_server_port()")
            on_replica(p, "autocommit SELECT")
            seen.add(p)
        check(seen == REPLICAS, f"round robin reads should use both replicas, saw {seen}")
        # Questions about the server's role get the primary's answer, like the greeting libpq keeps.
        in_recovery, p = one(conn, "SELECT pg_is_in_recovery(), inet_server_port()")
        check(in_recovery is False and p == PRIMARY, f"pg_is_in_recovery() = {in_recovery} on port {p}")
        hot = conn.get_parameter_status("in_hot_standby")
        check(hot == "off", f"the greeting's in_hot_standby = {hot!r}")
        row = one(conn, "SELECT %s + %s, %s || 'x', %s IS NULL, inet_server_port()", (40, 2, "y", None))
        check(row[:3] == (42, "yx", True), f"client-side bound parameters: {row}")
        on_replica(row[3], "SELECT with parameters")
        row = one(conn, "SELECT %(a)s::int * 2, inet_server_port()", {"a": 21})
        check(row[0] == 42, f"named parameters: {row}")
        on_replica(row[1], "SELECT with named parameters")
        row = one(conn, "INSERT INTO items VALUES (%s, %s, %s) RETURNING id, name, inet_server_port()",
                  (1, "one's", 10))
        check(row[:2] == (1, "one's"), f"INSERT RETURNING gave {row}")
        on_primary(row[2], "INSERT ... RETURNING")
        # Several statements in one string are one simple Query: with a write in it, all on the primary.
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (2, 'two', 2); SELECT inet_server_port()")
            on_primary(cur.fetchone()[0], "multi-statement string with a write")
        on_primary(one(conn, "SELECT inet_server_port() FROM items WHERE id = 1 FOR SHARE")[0],
                   "SELECT ... FOR SHARE")
    finally:
        conn.close()


@section
def executemany_and_execute_values():
    conn = connect()
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items (id, name, qty) VALUES (%s, %s, %s)",
                            [(i, f"many {i}", i) for i in range(100, 150)])
            check(cur.rowcount == 50, f"executemany rowcount {cur.rowcount}")
            ports = psycopg2.extras.execute_values(
                cur,
                "INSERT INTO items (id, name, qty) VALUES %s RETURNING inet_server_port()",
                [(i, f"values {i}", i) for i in range(150, 200)],
                fetch=True,
            )
            check(len(ports) == 50, f"execute_values returned {len(ports)} rows")
            for (p,) in ports:
                on_primary(p, "execute_values INSERT ... RETURNING")
            psycopg2.extras.execute_batch(
                cur, "UPDATE items SET qty = qty + 1000 WHERE id = %s", [(i,) for i in range(100, 110)]
            )
        wait_replicas_see("SELECT count(*) FROM items WHERE id BETWEEN 100 AND 199", 100,
                          "replicated executemany/execute_values")
        wait_replicas_see("SELECT count(*) FROM items WHERE qty > 1000", 10, "replicated execute_batch")
    finally:
        conn.close()


@section
def transactions():
    # psycopg2's default: BEGIN before the first statement, so everything runs on the primary.
    conn = connect(autocommit=False)
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (400, 'tx', 1)")
                cur.execute("SELECT name, inet_server_port() FROM items WHERE id = 400")
                row = cur.fetchone()
                check(row is not None and row[0] == "tx", f"transaction reads its own write: {row}")
                on_primary(row[1], "read in a read-write transaction")
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (401, 'rolled back', 1)")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), inet_server_port() FROM items WHERE id = 401")
            count, p = cur.fetchone()
        conn.rollback()
        check(count == 0, "rolled-back insert is gone")
        on_primary(p, "SELECT in a non-autocommit transaction")
        # A server-side (named) cursor: DECLARE and FETCH inside the transaction, on its node.
        with conn.cursor(name="big") as cur:
            cur.itersize = 7
            cur.execute("SELECT id, inet_server_port() FROM items WHERE id BETWEEN 100 AND 199 ORDER BY id")
            rows = list(cur)
        conn.commit()
        check([r[0] for r in rows] == list(range(100, 200)), f"named cursor rows: {len(rows)}")
        ports = {r[1] for r in rows}
        check(len(ports) == 1, f"one cursor, one node: {ports}")
        on_primary(ports.pop(), "named cursor in a read-write transaction")
        # Read-only sessions: psycopg2 sends BEGIN READ ONLY, which may run on a replica.
        wait_replicas_see("SELECT count(*) FROM items WHERE id = 400", 1, "replicated transaction")
        conn.set_session(readonly=True)
        settle(conn, "read-only transactions after the session's writes")
        ports = {port(conn) for _ in range(3)}
        check(len(ports) == 1, f"read-only transaction used several backends: {ports}")
        on_replica(ports.pop(), "read-only transaction (set_session(readonly=True))")
        with conn.cursor(name="ro_cursor") as cur:
            cur.execute("SELECT id, inet_server_port() FROM items WHERE id BETWEEN 100 AND 119 ORDER BY id")
            first = cur.fetchmany(5)
            rest = cur.fetchall()
        check([r[0] for r in first + rest] == list(range(100, 120)), "named cursor in a read-only transaction")
        on_replica(first[0][1], "named cursor in a read-only transaction")
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO items VALUES (402, 'ro', 1)")
            raise CheckFailed("INSERT in a READ ONLY transaction succeeded")
        except psycopg2.errors.ReadOnlySqlTransaction as e:
            check(e.pgcode == "25006", f"pgcode {e.pgcode}")
        conn.rollback()
        conn.set_session(readonly=False)
    finally:
        conn.close()


@section
def copy():
    conn = connect()
    try:
        data = "".join(f"{i},\"copied, {i}\",{i % 7}\n" for i in range(1000, 1300))
        with conn.cursor() as cur:
            cur.copy_expert("COPY items (id, name, qty) FROM STDIN WITH (FORMAT csv)", io.StringIO(data))
            check(cur.rowcount == 300, f"copy_expert FROM rowcount {cur.rowcount}")
            cur.copy_from(io.StringIO("".join(f"{i}\tfrom {i}\t\\N\n" for i in range(1300, 1400))), "items",
                          columns=("id", "name", "qty"))
            check(cur.rowcount == 100, f"copy_from rowcount {cur.rowcount}")
        wait_replicas_see("SELECT count(*) FROM items WHERE id BETWEEN 1000 AND 1399", 400, "replicated COPY")
        settle(conn, "after COPY FROM")
        out = io.StringIO()
        with conn.cursor() as cur:
            cur.copy_expert(
                "COPY (SELECT id, name, qty, inet_server_port() FROM items WHERE id BETWEEN 1000 AND 1299 "
                "ORDER BY id) TO STDOUT WITH (FORMAT csv)",
                out,
            )
        lines = out.getvalue().splitlines(keepends=True)
        check(len(lines) == 300, f"copy_expert TO returned {len(lines)} lines")
        body = "".join(line.rsplit(",", 1)[0] + "\n" for line in lines)
        check(body == data, "COPY TO returns what COPY FROM loaded")
        ports = {int(line.rsplit(",", 1)[1]) for line in lines}
        check(len(ports) == 1, f"one COPY, one node: {ports}")
        on_replica(ports.pop(), "COPY (SELECT) TO STDOUT")
        out = io.StringIO()
        with conn.cursor() as cur:
            cur.copy_to(out, "items", columns=("id", "qty"))
        text_rows = [r.split("\t") for r in out.getvalue().splitlines()]
        check(len(text_rows) == cur.rowcount and len(text_rows) >= 400, f"copy_to rows {len(text_rows)}")
        check(["1300", "\\N"] in text_rows, "copy_to keeps NULLs")
    finally:
        conn.close()


@section
def listen_notify():
    listener, sender = connect(), connect()
    try:
        with listener.cursor() as cur:
            cur.execute("LISTEN fleet_ch")
        on_primary(port(listener), "a LISTENing session")
        with sender.cursor() as cur:
            cur.execute("NOTIFY fleet_ch, 'first'")
            cur.execute("SELECT pg_notify('fleet_ch', %s)", ("second",))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            if select.select([listener], [], [], 0.5) != ([], [], []):
                listener.poll()
                while listener.notifies:
                    n = listener.notifies.pop(0)
                    got.append((n.channel, n.payload))
        check(got == [("fleet_ch", "first"), ("fleet_ch", "second")], f"notifications received: {got}")
        # Notifications that arrive during the listener's own query are kept in conn.notifies.
        with listener.cursor() as cur:
            cur.execute("NOTIFY fleet_ch, 'self'")
        check([n.payload for n in listener.notifies] == ["self"], f"own notification: {listener.notifies}")
        del listener.notifies[:]
        with listener.cursor() as cur:
            cur.execute("UNLISTEN *")
        with sender.cursor() as cur:
            cur.execute("NOTIFY fleet_ch, 'unheard'")
        time.sleep(0.3)
        listener.poll()
        check(listener.notifies == [], f"after UNLISTEN nothing arrives: {listener.notifies}")
    finally:
        listener.close()
        sender.close()


@section
def error_fields():
    conn = connect()
    try:
        with conn.cursor() as cur:
            try:
                cur.execute("INSERT INTO items VALUES (%s, %s, %s)", (1, "dup", 0))
                raise CheckFailed("duplicate insert succeeded")
            except psycopg2.errors.UniqueViolation as e:
                check(e.pgcode == "23505", f"pgcode {e.pgcode}")
                check(e.diag.sqlstate == "23505", f"diag.sqlstate {e.diag.sqlstate}")
                check(e.diag.severity == "ERROR", f"severity {e.diag.severity}")
                check(e.diag.message_primary == 'duplicate key value violates unique constraint "items_pkey"',
                      f"message_primary {e.diag.message_primary!r}")
                check(e.diag.message_detail == "Key (id)=(1) already exists.",
                      f"message_detail {e.diag.message_detail!r}")
                check(e.diag.constraint_name == "items_pkey", f"constraint_name {e.diag.constraint_name!r}")
                check(e.diag.table_name == "items", f"table_name {e.diag.table_name!r}")
                check(e.diag.schema_name == "public", f"schema_name {e.diag.schema_name!r}")
                check("DETAIL:  Key (id)=(1) already exists." in e.pgerror, f"pgerror {e.pgerror!r}")
            try:
                cur.execute("SELECT 1/0")
                raise CheckFailed("division by zero succeeded")
            except psycopg2.errors.DivisionByZero as e:
                check(e.pgcode == "22012", f"pgcode {e.pgcode}")
        settle(conn, "reads after errors")
        # Notices are collected in conn.notices.
        with conn.cursor() as cur:
            cur.execute("DO $$BEGIN RAISE NOTICE 'hello %', 1; END$$")
        check(any("NOTICE:  hello 1" in n for n in conn.notices), f"notices: {conn.notices}")
    finally:
        conn.close()


def cancel_during(conn, where):
    timer = threading.Timer(1.0, conn.cancel)
    started = time.monotonic()
    timer.start()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(10)")
        raise CheckFailed(f"{where}: pg_sleep(10) was not cancelled")
    except psycopg2.errors.QueryCanceled as e:
        elapsed = time.monotonic() - started
        check(e.pgcode == "57014", f"{where}: pgcode {e.pgcode}")
        check(elapsed < 5.0, f"{where}: cancelled only after {elapsed:.1f}s")
    finally:
        timer.cancel()


@section
def cancel():
    conn = connect()
    try:
        cancel_during(conn, "conn.cancel() on a replica read")
        on_replica(port(conn), "read after a cancel")
    finally:
        conn.close()
    conn = connect(autocommit=False)
    try:
        cancel_during(conn, "conn.cancel() inside a transaction (primary)")
        conn.rollback()
        on_primary(port(conn), "transaction after a cancel")
        conn.rollback()
    finally:
        conn.close()


if FAILURES:
    print(f"\n{len(FAILURES)} psycopg2 check(s) failed:", file=sys.stderr)
    for f in FAILURES:
        print(f"  - {f}", file=sys.stderr)
    sys.exit(1)
print("all psycopg2 checks passed")
