#!/usr/bin/env python3
"""Where a transaction's instructions go: self cost per transaction of each function (or of each source file or
line inside the functions named), from two callgrind outputs of the same build that differ only in the number of
transactions run (bench/instructions.sh with INSTR_KEEP keeps them). Start-up, logins and shutdown cancel out in
the difference, as in instructions.sh's totals.

    python3 bench/callgrind_self.py SHORT.out LONG.out --transactions 3200
    python3 bench/callgrind_self.py SHORT.out LONG.out --transactions 3200 --within 'PollFn<F>' --by line
    python3 bench/callgrind_self.py NEW_SHORT NEW_LONG --transactions 3200 --base OLD_SHORT OLD_LONG

--transactions is the difference in transactions between the two runs (clients x (long - short)). With --base,
the rows are the change from the base build's pair to this one, largest first.

Self cost counts an instruction where it ran: code inlined into a function counts for that function, under the
source file and line it came from (--by file/line), which is how a change in what the compiler inlined shows.
"""

import argparse
import collections
import re
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def compressed(table: dict[str, str], value: str) -> str:
    """Resolves callgrind's name compression: "(id) name" defines id, "(id)" refers to it."""
    m = NAMED.match(value)
    if not m:
        return value
    if m.group(2) is not None:
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1), m.group(1))


def step(position: str, old: int, base: int) -> int:
    """One position of a cost line: absolute, relative (+n / -n) or the same as before (*)."""
    if position == "*":
        return old
    if position.startswith("+"):
        return old + int(position[1:], base)
    if position.startswith("-"):
        return old - int(position[1:], base)
    return int(position, 16 if position.startswith("0x") else 10)


def self_costs(path: str, by: str, within: str | None) -> collections.Counter:
    """Self cost (the first event, Ir) per function, or per (file, line) of the functions whose name contains
    `within`."""
    files: dict[str, str] = {}
    functions: dict[str, str] = {}
    positions = ["line"]
    function = source = file_of_function = None
    last = [0] * len(positions)
    skip_next = False
    costs: collections.Counter = collections.Counter()
    with open(path, errors="replace") as f:
        for raw in f:
            if raw.startswith("positions:"):
                positions = raw.split(":", 1)[1].split()
                last = [0] * len(positions)
                continue
            if raw.startswith("fl="):
                file_of_function = source = compressed(files, raw[3:].strip())
                continue
            if raw.startswith(("fi=", "fe=")):
                source = compressed(files, raw[3:].strip())
                continue
            if raw.startswith("fn="):
                function = compressed(functions, raw[3:].strip())
                source = file_of_function
                continue
            if raw.startswith("cfn="):
                compressed(functions, raw[4:].strip())
                continue
            if raw.startswith(("cfi=", "cfl=")):
                compressed(files, raw[4:].strip())
                continue
            if raw.startswith("calls="):
                # The next cost line is the call's inclusive cost, not the caller's own.
                skip_next = True
                continue
            if not raw[:1] or not (raw[0].isdigit() or raw[0] in "+-*"):
                continue
            parts = raw.split()
            if len(parts) <= len(positions):
                continue
            for i, kind in enumerate(positions):
                last[i] = step(parts[i], last[i], 16 if kind == "instr" else 10)
            if skip_next:
                skip_next = False
                continue
            cost = int(parts[len(positions)])
            if within is None:
                costs[function] += cost
            elif function is not None and within in function:
                line = last[positions.index("line")] if "line" in positions else 0
                name = (source or "?").rsplit("/src/", 1)[-1]
                costs[name if by == "file" else f"{name}:{line}"] += cost
    return costs


def per_transaction(short: str, long: str, transactions: int, by: str, within: str | None) -> dict[str, float]:
    a, b = self_costs(short, by, within), self_costs(long, by, within)
    return {k: (b[k] - a[k]) / transactions for k in set(a) | set(b)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("short")
    p.add_argument("long")
    p.add_argument("--transactions", type=int, required=True,
                   help="transactions the long run made more than the short one")
    p.add_argument("--base", nargs=2, metavar=("SHORT", "LONG"), help="the base build's pair, to show the change")
    p.add_argument("--within", help="only functions whose name contains this, per source file or line")
    p.add_argument("--by", choices=("file", "line"), default="file")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    new = per_transaction(args.short, args.long, args.transactions, args.by, args.within)
    what = f"{args.by} inside functions named *{args.within}*" if args.within else "function"
    if args.base:
        old = per_transaction(*args.base, args.transactions, args.by, args.within)
        print(f"self cost per transaction by {what}: {sum(old.values()):,.0f} -> {sum(new.values()):,.0f}")
        rows = sorted(((new.get(k, 0.0) - old.get(k, 0.0), k) for k in set(old) | set(new)), key=lambda r: -abs(r[0]))
        for change, k in rows[: args.top]:
            print(f"{change:+9.1f}  {old.get(k, 0.0):9.1f} -> {new.get(k, 0.0):9.1f}  {k}")
    else:
        print(f"self cost per transaction by {what}: {sum(new.values()):,.0f}")
        for k, v in sorted(new.items(), key=lambda r: -r[1])[: args.top]:
            print(f"{v:9.1f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
