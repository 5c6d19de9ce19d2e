#!/usr/bin/env python3
"""Runs the pgbench workloads against every target, alternating targets in rounds, and prints the tables.

Called by bench/run.sh, which starts the cluster and the targets and writes targets.tsv (name, port, state,
note). For each workload and client count, every round runs each target once (the order rotates from round
to round, so no target always runs first or right after another), and the tables report medians over the
rounds: TPS (pgbench's, without connection time), pgbench's average latency, and the p99 latency computed
here from pgbench's per-transaction log (-l).

Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
import resource
import signal
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# The pgbench workloads: name -> (title, pgbench arguments). {rw} is the 90/10 custom script.
WORKLOADS = {
    "select-simple": ("select-only (-S), -M simple", ["-S", "-M", "simple"]),
    "select-extended": ("select-only (-S), -M extended", ["-S", "-M", "extended"]),
    "select-prepared": ("select-only (-S), -M prepared", ["-S", "-M", "prepared"]),
    "tpcb": ("TPC-B (tpcb-like), -M simple", ["-b", "tpcb-like", "-M", "simple"]),
    "rw90": ("90/10 read/write (workloads/rw90.sql), -M simple", ["-f", "{rw}", "-M", "simple"]),
    "select-bigkey": ("primary-key read with a 13-digit constant (workloads/bigkey.sql), -M simple",
                      ["-f", "{bigkey}", "-M", "simple"]),
}
# The sharded workload (bench/sharded.sh): {shard_*} are the scripts given with --script; they read
# :naccounts, given with --define.
SHARDED_SCRIPTS = {
    "shard-read": ("read by shard key (workloads/shard_read.sql)", "shard_read"),
    "shard-write": ("autocommit write by shard key (workloads/shard_write.sql)", "shard_write"),
    "shard-transfer": ("transfer between two shards, BEGIN; 2 UPDATEs; COMMIT (generated)", "shard_transfer"),
    "shard-sum": ("count(*), sum(balance) of every account (workloads/shard_sum.sql)", "shard_sum"),
}
for _name, (_title, _script) in SHARDED_SCRIPTS.items():
    for _mode in ("simple", "extended", "prepared"):
        WORKLOADS[f"{_name}-{_mode}"] = (f"{_title}, -M {_mode}", ["-f", "{" + _script + "}", "-M", _mode])
PGFLEETS = ("pgfleet-defaults", "pgfleet-session", "pgfleet-cores", "pgfleet-txn", "pgfleet-primary", "pgfleet-base",
            "pgfleet-unsharded", "pgfleet-sharded")
OTHERS = ("direct", "pgbouncer", "pgpool")


@dataclass
class Target:
    name: str
    port: int
    state: str
    note: str
    # The session id of the proxy's processes (bench/run.sh starts each proxy in a session of its own and
    # writes the leader's pid to pids/NAME); None for `direct`, which has no proxy.
    sid: int | None = None


@dataclass
class Run:
    ok: bool
    tps: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    failed: int = 0
    error: str = ""
    output: str = ""
    # The proxy's CPU time (user + system) and context switches (voluntary + involuntary) per transaction,
    # from /proc, over the whole run; None without a proxy process.
    cpu_us: float | None = None
    # Of cpu_us, the user time: the proxy's own instructions; the rest is the kernel's work for it (its system
    # calls, the wake-ups they cause).
    user_us: float | None = None
    cs: float | None = None
    # CPU time per transaction of every PostgreSQL process (the servers, their backends and the backends that
    # exited during the run) and of pgbench itself: what a proxy costs shows up there too, not only in its own.
    servers_us: float | None = None
    pgbench_us: float | None = None


@dataclass
class Cell:
    """One target in one (workload, clients) combination, over all rounds."""

    skipped: str = ""
    runs: list[Run] = field(default_factory=list)

    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.good() if getattr(r, attr) is not None]
        return statistics.median(values) if values else None


def read_targets(path: str) -> list[Target]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    pids = os.path.join(os.path.dirname(path), "pids")
    targets = []
    for r in rows:
        sid = None
        try:
            with open(os.path.join(pids, r["name"])) as f:
                sid = int(f.read().strip())
        except (OSError, ValueError):
            pass
        targets.append(Target(r["name"], int(r["port"]), r["state"], r["note"], sid))
    return targets


def processes() -> Iterator[tuple[int, str, list[str]]]:
    """Every process in /proc: its pid, its command name and the fields of its `stat` after the name (state,
    ppid, pgrp, session, ..., utime at index 11, stime 12, cutime 13, cstime 14). Processes that exit while
    they are read are skipped."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            yield int(entry), stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        except (OSError, ValueError):
            continue


def session_usage(sid: int) -> tuple[int, int, int]:
    """CPU clock ticks (user + system, all threads), of them the user ticks, and context switches (voluntary +
    involuntary, summed over every thread) of the processes in session `sid`: the proxy, its wrapper and, for
    pgpool-II, its children. A process that exits during a run takes its share with it (pgpool-II children
    that restart)."""
    ticks = user = switches = 0
    for pid, _, fields in processes():
        try:
            if int(fields[3]) != sid:
                continue
            ticks += int(fields[11]) + int(fields[12])
            user += int(fields[11])
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return ticks, user, switches


def skip_reason(target: Target, workload: str, clients: int, args: argparse.Namespace) -> str:
    """Why `target` cannot take `clients` clients of `workload`, or ''."""
    if target.state != "ok":
        return target.note
    if target.name == "direct-spread" and not workload.startswith("select"):
        return "n/a: the workload writes, and replicas refuse writes"
    # The relay opens a connection to the primary per client, as a direct client does.
    if target.name in ("direct", "direct-spread", "relay", "relay-uring") and clients > args.max_connections - 10:
        return f"n/a: the primary's max_connections is {args.max_connections}"
    # bench/sharded.sh's pgfleet targets run with session pooling too.
    # pgfleet-defaults runs with pgfleet's own pool defaults: session pooling with no cap of its own, so each
    # client holds a primary connection, as a direct client does.
    if target.name == "pgfleet-defaults" and clients > args.max_connections - 10:
        return (
            f"n/a: session pooling (the default) keeps a backend per client, and the primary's max_connections "
            f"is {args.max_connections}"
        )
    if target.name in ("pgfleet-session", "pgfleet-unsharded", "pgfleet-sharded") and clients > args.pool_size:
        return (
            f"n/a: session pooling keeps a backend per client, so {clients} clients cannot share a pool of "
            f"{args.pool_size} (the extra ones fail after pool.connect_timeout; see the connection tests)"
        )
    if target.name == "pgpool" and clients > args.pgpool_children:
        return (
            f"n/a: pgpool-II serves one client per child process (num_init_children={args.pgpool_children}) "
            f"and each child keeps its own backend connections, so {clients} clients need {clients} backend "
            f"connections per node (max_connections={args.max_connections}); with fewer children pgbench's "
            "extra connections wait forever for a free child"
        )
    return ""


def latency_from_logs(prefix: str) -> tuple[float, float, int, int]:
    """Median and p99 latency (ms), transactions and failed transactions from pgbench -l files `prefix.*`."""
    latencies: list[int] = []
    failed = 0
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                if fields[2].isdigit():
                    latencies.append(int(fields[2]))
                else:
                    failed += 1  # "failed" or "skipped"
        os.unlink(path)
    if not latencies:
        return 0.0, 0.0, 0, failed
    latencies.sort()

    def at(q: float) -> float:
        return latencies[max(0, int(round(q * len(latencies))) - 1)] / 1000.0

    return at(0.5), at(0.99), len(latencies), failed


def first_error(output: str) -> str:
    """The most telling line of a failed pgbench run's output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern in (r"ERROR:|FATAL:", r"^pgbench: (error|fatal):", r"aborted|failed|error"):
        for line in lines:
            if line.startswith("number of failed transactions"):
                continue
            if re.search(pattern, line, re.I):
                return re.sub(r"^pgbench: (error|fatal): ", "", line)[:200]
    return lines[-1][:200] if lines else "no output"


def script_args(extra: list[str], args: argparse.Namespace) -> list[str]:
    """`extra` with {rw} and the --script placeholders replaced, followed by the --define variables."""
    scripts = {"rw": args.rw_script, **dict(s.split("=", 1) for s in args.script)}
    out = []
    for a in extra:
        for name, path in scripts.items():
            a = a.replace("{" + name + "}", path)
        out.append(a)
    for d in args.define:
        out += ["-D", d]
    return out


def ratio_pairs(names: list[str], args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (numerator, denominator) targets of the ratio columns: --compare when given, else every pgfleet
    target against direct, pgbouncer and pgpool-II."""
    if args.compare:
        pairs = [tuple(c.split("/", 1)) for c in args.compare.split()]
        return [(a, b) for a, b in pairs if a in names and b in names]
    pairs = [(f, o) for f in PGFLEETS if f in names for o in OTHERS if o in names]
    # The defaults spread reads over every node: against the same spread without a proxy, what pgfleet costs
    # shows apart from what spreading itself costs on the machine.
    if "pgfleet-defaults" in names and "direct-spread" in names:
        pairs.append(("pgfleet-defaults", "direct-spread"))
    # The same configuration served by two builds: the change against the build before it.
    if "pgfleet-primary" in names and "pgfleet-base" in names:
        pairs.append(("pgfleet-primary", "pgfleet-base"))
    return pairs


def servers_scan() -> tuple[int, set[int]]:
    """CPU clock ticks of every process named `postgres` (postmasters and their backends), including what
    exited children left in their postmaster's totals (utime, stime, cutime, cstime), and their pids."""
    ticks, pids = 0, set()
    for pid, name, fields in processes():
        if name == "postgres" and len(fields) > 14:
            ticks += sum(int(v) for v in fields[11:15])
            pids.add(pid)
    return ticks, pids


def servers_usage() -> int:
    """`servers_scan`'s ticks once no server process is exiting. A backend that exits while /proc is read
    can be missed (its postmaster read before it was reaped, the backend after) or counted twice, so the
    reading is repeated until two in a row find the same processes: backends that came and went during a
    run (direct connections, a relay) then count as well as pooled ones."""
    ticks, pids = servers_scan()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        again, now = servers_scan()
        if now == pids:
            return again
        ticks, pids = again, now
    return ticks


def children_seconds() -> float:
    """CPU seconds (user + system) of this process's waited-for children: the pgbench runs."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def spread(clients: int, ports: list[int]) -> list[tuple[int, int]]:
    """(port, clients) for `clients` split as evenly as they go over `ports`, the first ones taking the rest."""
    used = max(1, min(clients, len(ports)))
    return [(ports[i], clients // used + (1 if i < clients % used else 0)) for i in range(used)]


def run_pgbench(target: Target, workload: str, clients: int, args: argparse.Namespace, tag: str) -> Run:
    _, extra = WORKLOADS[workload]
    extra = script_args(extra, args)
    jobs = max(1, min(clients, os.cpu_count() or 1))
    prefix = os.path.join(args.work, f"tx-{tag}")
    # `direct-spread`: one pgbench per node, all at once, the clients split over the nodes (a read-only
    # workload through no proxy, spread as a balancer would spread it); the others: one pgbench on the port.
    parts = spread(clients, args.spread_ports) if target.name == "direct-spread" else [(target.port, clients)]
    cmds = [
        [
            "pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", args.user,
            # The parts share the threads one pgbench would have, so pgbench itself costs no more.
            "-c", str(share), "-j", str(max(1, min(share, jobs // len(parts)))), "-T", str(args.seconds),
            # The parts' logs share the prefix that latency_from_logs collects.
            "-l", f"--log-prefix={prefix}" + (f".part{i}" if len(parts) > 1 else ""), *extra, args.database,
        ]
        for i, (port, share) in enumerate(parts)
    ]
    env = dict(os.environ, PGPASSWORD=args.password, PGSSLMODE="disable", PGAPPNAME="pgfleet-bench")
    # Room for connecting 500 clients through a proxy (SCRAM each) and for a proxy that makes clients wait.
    timeout = args.seconds + 120 + clients // 5
    before = session_usage(target.sid) if target.sid else None
    servers_before, pgbench_before = servers_usage(), children_seconds()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outputs: list[str] = []
    timed_out = False
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(0.0, deadline - time.monotonic()))[0] or "")
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            outputs.append(proc.communicate()[0] or "")
    after = session_usage(target.sid) if target.sid else None
    servers_after, pgbench_after = servers_usage(), children_seconds()
    p50, p99, count, failed_logged = latency_from_logs(prefix)
    output = "\n".join(outputs)
    if timed_out:
        return Run(ok=False, error=f"pgbench timed out after {timeout} s")
    tps_sum = avg_weighted = 0.0
    txns = nfailed = 0
    for proc, out in zip(procs, outputs):
        tps = re.search(r"^tps = ([0-9.]+)", out, re.M)
        avg = re.search(r"^latency average = ([0-9.]+) ms", out, re.M)
        failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)
        nfailed += int(failed.group(1)) if failed else 0
        if proc.returncode != 0 or "aborted" in out or not tps or not avg:
            return Run(ok=False, error=first_error(out), failed=nfailed or failed_logged, output=output)
        done = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
        part_txns = int(done.group(1)) if done else count
        tps_sum += float(tps.group(1))
        avg_weighted += float(avg.group(1)) * part_txns
        txns += part_txns
    nfailed = nfailed or failed_logged
    avg_ms = avg_weighted / txns if txns else 0.0
    cpu_us = user_us = cs = servers_us = pgbench_us = None
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    if before and after and txns > 0:
        cpu_us = (after[0] - before[0]) * tick_us / txns
        user_us = (after[1] - before[1]) * tick_us / txns
        cs = (after[2] - before[2]) / txns
    if txns > 0:
        # Logins included: pgbench's totals cover its connection phase, which its TPS leaves out.
        servers_us = (servers_after - servers_before) * tick_us / txns
        pgbench_us = (pgbench_after - pgbench_before) * 1e6 / txns
    return Run(ok=True, tps=tps_sum, avg_ms=avg_ms, p50_ms=p50, p99_ms=p99,
               failed=nfailed, cpu_us=cpu_us, user_us=user_us, cs=cs, servers_us=servers_us,
               pgbench_us=pgbench_us)


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def difference(f: Cell, o: Cell) -> str:
    """What target f costs per transaction beyond target o: average latency and proxy CPU time."""
    text = f"adds {(f.median('avg_ms') - o.median('avg_ms')) * 1000.0:+.0f} µs average latency"
    fc, oc = f.median("cpu_us"), o.median("cpu_us")
    if fc is not None:
        text += f", {fc - (oc or 0.0):+.1f} CPU µs/tx of the proxy"
    return text


def print_combo(title: str, clients: int, targets: list[Target], cells: dict[str, Cell], rounds: int,
                args: argparse.Namespace) -> None:
    print(f"\n== {title}, {clients} client{'s' if clients != 1 else ''} ==")
    print(
        f"  {'target':<16} {'TPS':>10} {'avg ms':>9} {'p50 ms':>9} {'p99 ms':>9} {'CPU µs/tx':>10} {'cs/tx':>6} "
        f"{'runs':>5}  note"
    )
    for t in targets:
        c = cells[t.name]
        if c.skipped:
            print(f"  {t.name:<16} {'-':>10} {'-':>9} {'-':>9} {'-':>9} {'-':>10} {'-':>6} {'-':>5}  {c.skipped}")
            continue
        good = c.good()
        note = ""
        bad = [r for r in c.runs if not r.ok]
        if bad:
            note = f"{len(bad)} run(s) failed: {bad[0].error}"
        failed = sum(r.failed for r in good)
        if failed:
            note = (note + "; " if note else "") + f"{failed} failed transactions"
        print(
            f"  {t.name:<16} {fmt(c.median('tps'), 1):>10} {fmt(c.median('avg_ms'), 3):>9} "
            f"{fmt(c.median('p50_ms'), 3):>9} {fmt(c.median('p99_ms'), 3):>9} {fmt(c.median('cpu_us'), 1):>10} "
            f"{fmt(c.median('cs'), 2):>6} {len(good)}/{rounds:<3}  {note}"
        )
    lines = []
    for fleet, other in ratio_pairs([t.name for t in targets], args):
        if not cells[fleet].good() or not cells[other].good():
            continue
        f, o = cells[fleet], cells[other]
        lines.append(
            f"  {fleet + '/' + other:<28} TPS {ratio(f.median('tps'), o.median('tps')):>7}   "
            f"avg latency {ratio(f.median('avg_ms'), o.median('avg_ms')):>7}   "
            f"p99 {ratio(f.median('p99_ms'), o.median('p99_ms')):>7}"
        )
        if args.compare:
            lines.append(f"  {'':<28} {difference(f, o)}")
    direct = cells.get("direct")
    if clients == 1 and direct is not None and direct.good():
        for fleet in PGFLEETS:
            if fleet in cells and cells[fleet].good():
                added = (cells[fleet].median("p50_ms") - direct.median("p50_ms")) * 1000.0
                lines.append(f"  {fleet + ' adds':<28} {added:.0f} µs to the median latency of direct")
    if lines:
        print("  ratios (medians; TPS above 1x and latency below 1x favour pgfleet):")
        print("\n".join(lines))
    sys.stdout.flush()


def table(out: list[str], results: list[tuple[str, int, dict[str, Cell]]], columns: list[str],
          cell: Callable[[Cell], str], title: str) -> None:
    """Appends a titled markdown table: a row per (workload, clients), a column per target in `columns`."""
    out += ["", title, ""]
    out.append("| " + " | ".join(["workload", "clients", *columns]) + " |")
    out.append("|" + "|".join(["---", "---:"] + ["---:"] * len(columns)) + "|")
    for workload, clients, cells in results:
        out.append("| " + " | ".join([workload, str(clients), *(cell(cells[n]) for n in columns)]) + " |")


def markdown(results: list[tuple[str, int, dict[str, Cell]]], targets: list[Target],
             args: argparse.Namespace) -> str:
    names = [t.name for t in targets]
    fleets = [f for f in PGFLEETS if f in names and any(c[f].good() for _, _, c in results)]
    ratio_cols = [(f, o) for f, o in ratio_pairs(names, args) if f in fleets]
    out = ["TPS (median of the rounds; `-` = not run, `err` = failed):", ""]
    head = ["workload", "clients", *names, *(f"{f}/{o}" for f, o in ratio_cols)]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---:"] + ["---:"] * (len(head) - 2)) + "|")
    for workload, clients, cells in results:
        row = [workload, str(clients)]
        for n in names:
            c = cells[n]
            row.append("-" if c.skipped else ("err" if not c.good() else f"{c.median('tps'):.0f}"))
        for f, o in ratio_cols:
            row.append(ratio(cells[f].median("tps"), cells[o].median("tps")))
        out.append("| " + " | ".join(row) + " |")

    def latency(c: Cell) -> str:
        if c.skipped:
            return "-"
        if not c.good():
            return "err"
        return f"{c.median('avg_ms'):.3f} / {c.median('p50_ms'):.3f} / {c.median('p99_ms'):.2f}"

    def proxy_cpu(c: Cell) -> str:
        cpu, user, cs = c.median("cpu_us"), c.median("user_us"), c.median("cs")
        if c.skipped or not cpu or user is None or cs is None:
            return "-"
        return f"{cpu:.1f} ({user:.1f}) / {cs:.2f} / {1e6 / cpu:,.0f}"

    def others_cpu(c: Cell) -> str:
        srv, pgb = c.median("servers_us"), c.median("pgbench_us")
        return "-" if c.skipped or srv is None or pgb is None else f"{srv:.1f} / {pgb:.1f}"

    table(out, results, names, latency, "Latency, average / median / p99 in ms (medians of the rounds):")
    table(
        out, results, [n for n in names if n not in ("direct", "direct-spread")], proxy_cpu,
        "The proxy's CPU time per transaction in µs (of it, user time) / its context switches per transaction / "
        "transactions per second of proxy CPU time (medians of the rounds, from /proc: user + system time and "
        "voluntary + involuntary switches of every process and thread of the proxy; `direct` has no proxy):",
    )
    table(
        out, results, names, others_cpu,
        "CPU time per transaction in µs of the PostgreSQL servers (every `postgres` process on the machine, "
        "backends included) / of pgbench itself (medians of the rounds, from /proc; logins included): a proxy's way of talking to the servers "
        "and to the clients shows up here, not only in its own CPU time:",
    )
    added = []
    for workload, clients, cells in results:
        direct = cells.get("direct")
        if clients != 1 or direct is None or not direct.good():
            continue
        for f in fleets:
            if cells[f].good():
                us = (cells[f].median("p50_ms") - direct.median("p50_ms")) * 1000.0
                added.append(f"- {workload}: {f} {us:.0f} µs")
    if added:
        out += ["", "Added to the median latency of a direct connection, one client:", "", *added]
    if args.compare:
        diffs = []
        for workload, clients, cells in results:
            for f, o in ratio_cols:
                if cells[f].good() and cells[o].good():
                    diffs.append(f"- {workload}, {clients} clients: {f} over {o} {difference(cells[f], cells[o])}")
        if diffs:
            out += ["", "Cost per transaction of one target over another (medians):", "", *diffs]
    notes = []
    for workload, clients, cells in results:
        for n in names:
            c = cells[n]
            if not c.skipped and not c.good() and c.runs:
                notes.append(f"- {n}, {workload}, {clients} clients: {c.runs[0].error}")
    if notes:
        out += ["", "Failures:", "", *notes]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--workloads", required=True)
    p.add_argument("--clients", required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--max-connections", type=int, required=True)
    p.add_argument("--pgpool-children", type=int, required=True)
    p.add_argument("--pool-size", type=int, required=True)
    p.add_argument("--rw-script", default="", help="the rw90 script")
    p.add_argument("--script", action="append", default=[], metavar="NAME=PATH",
                   help="a script for the workloads that name {NAME} (the sharded ones)")
    p.add_argument("--define", action="append", default=[], metavar="VAR=VALUE", help="pgbench -D VAR=VALUE")
    p.add_argument("--compare", default="", metavar="A/B ...",
                   help="ratio columns A/B (and A's added cost over B) instead of pgfleet against the others")
    p.add_argument("--warmup-script", default="", help="pgbench script for the warm-up instead of -S")
    p.add_argument("--summary", required=True)
    p.add_argument("--spread-ports", type=lambda v: [int(x) for x in v.split()], default=[],
                   metavar="'PRIMARY REPLICA ...'", help="the nodes' ports, for the direct-spread target")
    p.add_argument("--warmup", type=int, default=5, help="seconds of select-only through each target first")
    args = p.parse_args()

    if not shutil.which("pgbench"):
        print("pgbench is not on PATH", file=sys.stderr)
        return 1
    targets = read_targets(args.targets)
    workloads = args.workloads.split()
    for w in workloads:
        if w not in WORKLOADS:
            print(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 1
    client_counts = [int(c) for c in args.clients.split()]
    combos = [(w, c) for w in workloads for c in client_counts]
    runnable = sum(1 for t in targets if t.state == "ok")
    estimate = len(combos) * runnable * args.rounds * (args.seconds + 2)
    print(
        f"\npgbench: {len(workloads)} workloads x {len(client_counts)} client counts x up to {runnable} targets "
        f"x {args.rounds} rounds x {args.seconds} s (about {estimate // 60} min); pool size {args.pool_size}"
    )
    if args.warmup > 0:
        # Warm the page cache of every node (reads reach the replicas only through the proxies) and the pools.
        what = os.path.basename(args.warmup_script) if args.warmup_script else "select-only"
        print(f"warm-up: {args.warmup} s of {what} with 4 clients through each target")
        for t in targets:
            if t.state == "ok":
                env = dict(os.environ, PGPASSWORD=args.password, PGSSLMODE="disable")
                what = script_args(["-f", args.warmup_script], args) if args.warmup_script else ["-S"]
                subprocess.run(
                    ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(t.port), "-U", args.user, "-c", "4", "-j", "2",
                     "-T", str(args.warmup), *what, args.database],
                    env=env, capture_output=True, timeout=args.warmup + 120, check=False)
    results: list[tuple[str, int, dict[str, Cell]]] = []
    seq = 0
    for workload, clients in combos:
        title = WORKLOADS[workload][0]
        cells = {t.name: Cell(skipped=skip_reason(t, workload, clients, args)) for t in targets}
        active = [t for t in targets if not cells[t.name].skipped]
        for rnd in range(args.rounds):
            # Rotate the order each round.
            order = active[rnd % len(active):] + active[: rnd % len(active)] if active else []
            for t in order:
                seq += 1
                started = time.monotonic()
                r = run_pgbench(t, workload, clients, args, f"{seq}")
                cells[t.name].runs.append(r)
                took = time.monotonic() - started
                state = (
                    f"tps {r.tps:9.1f}  avg {r.avg_ms:7.3f} ms  p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms"
                    f"  cpu {fmt(r.cpu_us, 1)} µs/tx (user {fmt(r.user_us, 1)})  cs {fmt(r.cs, 2)}/tx"
                    f"  servers {fmt(r.servers_us, 1)}  pgbench {fmt(r.pgbench_us, 1)} µs/tx"
                    if r.ok
                    else f"FAILED: {r.error}"
                )
                print(f"  [{workload} c={clients} round {rnd + 1}] {t.name:<16} {state}  ({took:.0f} s)")
                if not r.ok and r.output:
                    # The end of pgbench's output, where it says why it stopped.
                    for line in [x for x in r.output.splitlines() if x.strip()][-6:]:
                        print(f"      | {line[:200]}")
                sys.stdout.flush()
        print_combo(title, clients, targets, cells, args.rounds, args)
        results.append((workload, clients, cells))

    summary = markdown(results, targets, args)
    with open(args.summary, "a") as f:
        f.write(summary)
    print("\n== Summary (markdown) ==\n")
    print(summary)
    return 0


if __name__ == "__main__":
    # SIGTERM (bench/run.sh stopping us) unwinds like Ctrl-C: subprocess.run kills a running pgbench, and
    # connections are closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
