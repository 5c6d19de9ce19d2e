#!/usr/bin/env python3
"""pgfleet memory and connection tests, called by bench/run.sh against a freshly started pgfleet.

  idle        opens N idle client connections, reports pgfleet's RSS growth and bytes per client
  concurrent  N clients connect at once, then each runs a few queries while all stay connected; reports
              errors, pgfleet's peak RSS and the most backend connections seen per node (pg_stat_activity)
  stream      one client reads a multi-million-row result slowly (a pause, then a capped row rate) while
              pgfleet's RSS is sampled; the growth must stay below --limit-mib (64 MiB), whatever the result size

RSS is read from /proc/<pid>/status (VmRSS, VmHWM) of the pgfleet process given with --pid. Needs psycopg 3.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

MIB = 1024 * 1024


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


class Sampler:
    """Samples VmRSS of a process every `interval` seconds in a thread and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak = status(pid)["VmRSS"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, status(self.pid)["VmRSS"])
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def conninfo(args: argparse.Namespace) -> dict[str, object]:
    return dict(
        host=args.host, port=args.port, user=args.user, password=args.password, dbname=args.database,
        sslmode="disable", connect_timeout=30, application_name="pgfleet-bench",
    )


def short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def summary(args: argparse.Namespace, line: str) -> None:
    if args.summary:
        with open(args.summary, "a") as f:
            f.write(line + "\n")


def idle(args: argparse.Namespace) -> int:
    kw = conninfo(args)
    before = status(args.pid)["VmRSS"]
    conns: list[psycopg.Connection] = []
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    gave_up = threading.Event()

    def open_one(_: int) -> None:
        if gave_up.is_set():
            return
        try:
            c = psycopg.connect(**kw)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                errors[short(e)] += 1
                if sum(errors.values()) >= args.max_errors:
                    gave_up.set()
            return
        with lock:
            conns.append(c)

    started = time.monotonic()
    with Sampler(args.pid) as sampler, ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(open_one, range(args.clients)))
        time.sleep(2)
    took = time.monotonic() - started
    after = status(args.pid)
    # The idle sessions must still work.
    alive = 0
    for c in random.sample(conns, min(20, len(conns))):
        try:
            c.execute("SELECT 1").fetchone()
            alive += 1
        except Exception as e:  # noqa: BLE001
            errors["after idling: " + short(e)] += 1
    n = len(conns)
    for c in conns:
        c.close()
    growth = after["VmRSS"] - before
    per_client = growth / n if n else 0
    print(f"idle clients: {n}/{args.clients} connected in {took:.1f} s", end="")
    print(f" (gave up after {sum(errors.values())} errors)" if gave_up.is_set() else "")
    print(f"  pgfleet RSS before {mib(before)}, with the clients {mib(after['VmRSS'])}, peak {mib(sampler.peak)}"
          f" (VmHWM {mib(after['VmHWM'])})")
    print(f"  growth {mib(growth)} = {per_client / 1024:.1f} KiB per connected client ({per_client:.0f} bytes)")
    print(f"  a sample of {min(20, n)} idle sessions answered SELECT 1 afterwards: {alive}")
    for msg, count in errors.most_common(5):
        print(f"  error x{count}: {msg}")
    ok = n == args.clients and not errors
    print(f"  result: {'OK' if ok else 'FAILED'}")
    summary(args, f"- idle: {n}/{args.clients} clients connected, RSS {mib(before)} -> {mib(after['VmRSS'])}, "
                  f"{per_client:.0f} bytes per client, errors {sum(errors.values())}"
                  + (f" (first: {errors.most_common(1)[0][0]})" if errors else ""))
    return 0 if ok else 1


async def concurrent_run(args: argparse.Namespace) -> int:
    kw = conninfo(args)
    n = args.clients
    sem = asyncio.Semaphore(args.connect_concurrency)
    finished_connecting = 0
    all_attempted = asyncio.Event()
    connected = 0
    peak_connected = 0
    served = 0
    errors: collections.Counter[str] = collections.Counter()
    backends = {port: 0 for port in args.node_ports}
    rss_peak = status(args.pid)["VmRSS"]
    before = rss_peak
    done = asyncio.Event()

    # One superuser connection per node, straight to the node, counting the app's backends there.
    monitors = {}
    for port in args.node_ports:
        monitors[port] = await psycopg.AsyncConnection.connect(
            host=args.host, port=port, user=args.superuser, password=args.password, dbname="postgres",
            sslmode="disable", autocommit=True)

    async def count_backends() -> dict[int, int]:
        counts = {}
        for port, m in monitors.items():
            cur = await m.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s "
                "AND backend_type = 'client backend'", (args.database, args.user))
            row = await cur.fetchone()
            counts[port] = row[0] if row else 0
        return counts

    # pgfleet's own connections before any client (e.g. reading the function catalog) are not the pool's.
    baseline = await count_backends()

    async def sample() -> None:
        nonlocal rss_peak
        while not done.is_set():
            rss_peak = max(rss_peak, status(args.pid)["VmRSS"])
            for port, count in (await count_backends()).items():
                backends[port] = max(backends[port], count)
            try:
                await asyncio.wait_for(done.wait(), 0.2)
            except TimeoutError:
                pass

    not_attempted = 0
    # The query phase: from the moment every client has connected to the last query's answer, and the slowest
    # single query (a pool's queue shows here before it turns into checkout timeouts).
    queries_from = 0.0
    last_answer = 0.0
    slowest = 0.0

    async def client(i: int) -> None:
        nonlocal finished_connecting, connected, peak_connected, served, not_attempted
        nonlocal queries_from, last_answer, slowest
        conn = None
        try:
            async with sem:
                if sum(errors.values()) >= args.max_errors:
                    not_attempted += 1
                    return
                conn = await psycopg.AsyncConnection.connect(**kw, autocommit=True, prepare_threshold=None)
            connected += 1
            peak_connected = max(peak_connected, connected)
        except Exception as e:  # noqa: BLE001
            errors["connect: " + short(e)] += 1
        finally:
            finished_connecting += 1
            if finished_connecting == n:
                queries_from = time.monotonic()
                all_attempted.set()
        if conn is None:
            return
        try:
            await all_attempted.wait()
            rng = random.Random(i)
            for _ in range(args.queries):
                aid = rng.randint(1, 100000 * args.scale)
                sent = time.monotonic()
                cur = await asyncio.wait_for(
                    conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)), 120)
                await cur.fetchone()
                last_answer = time.monotonic()
                slowest = max(slowest, last_answer - sent)
            served += 1
        except Exception as e:  # noqa: BLE001
            errors["query: " + short(e)] += 1
        finally:
            connected -= 1
            await conn.close()

    started = time.monotonic()
    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(client(i) for i in range(n)))
    took = time.monotonic() - started
    done.set()
    await sampler
    for m in monitors.values():
        await m.close()
    pooled = {port: backends[port] - baseline[port] for port in backends}
    after = status(args.pid)
    nerr = sum(errors.values())
    print(f"concurrent clients: {n} clients, {args.queries} queries each, in {took:.1f} s")
    print(f"  connected at once: {peak_connected}; served all queries: {served}; errors: {nerr}"
          + (f" (then gave up: {not_attempted} clients not attempted)" if not_attempted else ""))
    if last_answer > queries_from > 0:
        print(f"  queries: {served * args.queries} answered in {last_answer - queries_from:.2f} s after the last"
              f" connect; slowest query {slowest * 1000:.0f} ms")
    print(f"  most backend connections seen per node, less those open before the clients came: "
          + ", ".join(f"port {p}: {pooled[p]}" for p in backends)
          + f" (pool max_size {args.pool_size})")
    print(f"  pgfleet RSS before {mib(before)}, peak {mib(rss_peak)}, after {mib(after['VmRSS'])}"
          f" (VmHWM {mib(after['VmHWM'])})")
    for msg, count in errors.most_common(5):
        print(f"  error x{count}: {msg}")
    ok = served == n and nerr == 0 and all(c <= args.pool_size for c in pooled.values())
    print(f"  result: {'OK' if ok else 'FAILED'}")
    summary(args, f"- concurrent: {served}/{n} clients served ({peak_connected} connected at once), errors {nerr}"
                  + (f" (gave up, {not_attempted} not attempted)" if not_attempted else "")
                  + (f" (first: {errors.most_common(1)[0][0]})" if errors else "")
                  + f", most pooled backends per node {max(pooled.values(), default=0)}, peak RSS {mib(rss_peak)}"
                  + (f", query phase {last_answer - queries_from:.2f} s, slowest query {slowest * 1000:.0f} ms"
                     if last_answer > queries_from > 0 else ""))
    return 0 if ok else 1


def concurrent(args: argparse.Namespace) -> int:
    return asyncio.run(concurrent_run(args))


def stream(args: argparse.Namespace) -> int:
    width = 100
    sql = f"SELECT g, repeat('x', {width}) AS pad FROM generate_series(1, {int(args.rows)}) AS g"
    with psycopg.connect(**conninfo(args), autocommit=True) as conn:
        before = status(args.pid)["VmRSS"]
        rows = 0
        wire = 0
        started = time.monotonic()
        with Sampler(args.pid) as sampler, conn.cursor() as cur:
            paced_from = None
            marks = {args.rows * q // 4: q for q in (1, 2, 3, 4)}
            at_marks = []
            for g, pad in cur.stream(sql):
                rows += 1
                if rows in marks:
                    at_marks.append(f"{marks[rows] * 25}%: {mib(status(args.pid)['VmRSS'])}")
                # DataRow: type, length, column count, then length + text of each column.
                wire += 1 + 4 + 2 + 4 + len(str(g)) + 4 + len(pad)
                if rows == 1:
                    time.sleep(args.pause)  # a client that stops reading for a while
                    paced_from = time.monotonic()
                elif rows % 5000 == 0 and paced_from is not None:
                    ahead = rows / args.rate - (time.monotonic() - paced_from)
                    if ahead > 0:
                        time.sleep(ahead)
        took = time.monotonic() - started
        peak = sampler.peak
        hwm = status(args.pid)["VmHWM"]
    growth = peak - before
    limit = args.limit_mib * MIB
    bounded = growth <= limit
    print(f"slow client: {rows:,} rows ({mib(wire)} of DataRows) read in {took:.1f} s "
          f"(paused {args.pause:.0f} s after the first row, then at most {args.rate:,} rows/s)")
    print(f"  pgfleet RSS before {mib(before)}, peak {mib(peak)} (VmHWM {mib(hwm)}): growth {mib(growth)}")
    print(f"  pgfleet RSS after reading " + ", ".join(at_marks) + " of the rows (flat = bounded)")
    ok = bounded and rows == args.rows
    print(f"  result: {'OK' if ok else 'FAILED'}: growth {'within' if bounded else 'above'} the bound of "
          f"{mib(limit)} (--limit-mib), with {mib(wire)} streamed")
    summary(args, f"- stream: {rows:,} rows ({mib(wire)}) to a slow client, pgfleet RSS {mib(before)} -> peak "
                  f"{mib(peak)} (growth {mib(growth)}, {'bounded' if bounded else 'NOT bounded'})")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("test", choices=["idle", "concurrent", "stream"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="app")
    p.add_argument("--password", default="demo")
    p.add_argument("--database", default="app")
    p.add_argument("--superuser", default="postgres")
    p.add_argument("--node-ports", default="", help="ports of the nodes, space-separated (concurrent)")
    p.add_argument("--pid", type=int, required=True, help="pgfleet's pid")
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--workers", type=int, default=64, help="threads opening idle connections")
    p.add_argument("--max-errors", type=int, default=0,
                   help="stop opening connections after this many errors (default: idle 200, concurrent 500)")
    p.add_argument("--connect-concurrency", type=int, default=256, help="concurrent: connects in flight")
    p.add_argument("--queries", type=int, default=3, help="concurrent: queries per client")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale of the data set")
    p.add_argument("--pool-size", type=int, default=20)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--rate", type=int, default=200_000, help="stream: rows per second the client reads at most")
    p.add_argument("--pause", type=float, default=3.0, help="stream: seconds without reading after the first row")
    p.add_argument("--limit-mib", type=int, default=64, help="stream: most RSS growth still called bounded")
    p.add_argument("--summary", default="", help="markdown file to append a one-line result to")
    args = p.parse_args()
    args.node_ports = [int(x) for x in args.node_ports.split()]
    args.max_errors = args.max_errors or (200 if args.test == "idle" else 500)
    print()
    return {"idle": idle, "concurrent": concurrent, "stream": stream}[args.test](args)


if __name__ == "__main__":
    # SIGTERM (bench/run.sh stopping us) unwinds like Ctrl-C: subprocess.run kills a running pgbench, and
    # connections are closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
