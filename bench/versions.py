"""Two versions of wiretask on the same benches, interleaved (issue 11's before/after).

Run: ``python bench/versions.py --before DIR --before-python PY`` where ``DIR`` is a
checkout of the earlier commit (``git worktree add --detach /tmp/before 0f9a0cd``) and
``PY`` the interpreter of a venv with that checkout installed (its own dependencies at the
same versions as this venv's). ``--benches redis_publish,end_to_end`` (the default) names
the benches; each must exist in both checkouts and print the Markdown table of
``_common.print_table``. ``--rounds N`` (3), ``--scale S`` (1) and ``--bench-args``
(passed to every bench run, e.g. ``"--repeat 1"``) tune the run.

Method: round after round, every bench runs once for each version, the version that goes
first alternating by round, each in its own process with its own checkout's bench script
(so each side measures itself exactly as it measured itself then), against one Redis
(``$WIRETASK_BENCH_REDIS_URL`` or a private ``redis-server``). For every row both
versions print (matched by the operation's name), the best of the rounds is kept per
version, and the ratio ``tip / before`` of the rates is reported. Each bench measures its
Celery reference in the same process run, so the Celery figure of both sides is shown
too: it should agree between the two (the same Celery), and where it does not, machine
load moved between the two runs and the ratio of ratios (``vs Celery``) is the steadier
figure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import BENCH_DIR, ROOT, machine_facts, redis_url

#: A table row of ``print_table``: operation, wiretask rate, reference, reference rate.
_ROW = re.compile(r"^\|\s*(?P<op>[^|]+?)\s*\|\s*(?P<ours>[\d,.]+)\s*\|\s*(?P<ref>[^|]+?)\s*"
                  r"\|\s*(?P<theirs>[\d,.]+)\s*\|")


@dataclass(frozen=True)
class Side:
    """One version: its label, checkout and interpreter."""

    label: str
    root: Path
    python: str


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier checkout")
    parser.add_argument("--before-python", required=True,
                        help="the interpreter with the earlier checkout installed")
    parser.add_argument("--benches", default="redis_publish,end_to_end")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--bench-args", default="", help="more arguments for every bench")
    return parser.parse_args()


def rows_of(output: str) -> dict[tuple[str, str], tuple[float, float]]:
    """``(operation, reference) -> (wiretask rate, reference rate)`` from a bench's
    table (the first time a pair appears)."""
    rows: dict[tuple[str, str], tuple[float, float]] = {}
    for line in output.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        key = (match["op"], match["ref"])
        rows.setdefault(key, (float(match["ours"].replace(",", "")),
                              float(match["theirs"].replace(",", ""))))
    return rows


def run_bench(side: Side, bench: str, url: str, extra: Sequence[str]) -> str:
    script = side.root / "bench" / f"{bench}.py"
    env = {**os.environ, "WIRETASK_BENCH_REDIS_URL": url,
           "PYTHONPATH": os.pathsep.join((str(side.root / "bench"), str(side.root / "src")))}
    done = subprocess.run([side.python, str(script), *extra], env=env, cwd=side.root,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side.label} {bench} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def main() -> None:
    options = parse()
    sides = (Side("before", options.before.resolve(), options.before_python),
             Side("tip", ROOT, sys.executable))
    benches = [b for b in options.benches.split(",") if b]
    extra = ["--scale", str(options.scale), *options.bench_args.split()]
    print(f"wiretask versions bench -- {machine_facts()}")
    print(f"before: {sides[0].root}; tip: {sides[1].root}; {options.rounds} rounds, "
          f"alternating which goes first; bench arguments {extra}")
    # best[bench][side label][row] = (wiretask rate, reference rate)
    best: dict[str, dict[str, dict[tuple[str, str], tuple[float, float]]]] = {
        b: {s.label: {} for s in sides} for b in benches}
    with redis_url() as base:
        for round_ in range(options.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for bench in benches:
                for side in order:
                    rows = rows_of(run_bench(side, bench, base, extra))
                    kept = best[bench][side.label]
                    for key, rates in rows.items():
                        if key not in kept or rates[0] > kept[key][0]:
                            kept[key] = rates
                    first = next(iter(rows.items()), None)
                    print(f"round {round_ + 1} {bench} {side.label}: "
                          f"{first[0][0] if first else '-'} {first[1][0] if first else 0:,.0f}/s",
                          file=sys.stderr, flush=True)
    print()
    print("| bench | operation | before /s | tip /s | tip / before | Celery /s (before run, tip "
          "run) | vs Celery, before -> tip |")
    print("|---|---|---|---|---|---|---|")
    for bench in benches:
        before, tip = best[bench]["before"], best[bench]["tip"]
        for key in [k for k in tip if k in before]:
            (b_ours, b_ref), (t_ours, t_ref) = before[key], tip[key]
            print(f"| {bench} | {key[0]} (ref: {key[1]}) | {b_ours:,.0f} | {t_ours:,.0f} | "
                  f"{t_ours / b_ours:.2f}x | {b_ref:,.0f}, {t_ref:,.0f} | "
                  f"{b_ours / b_ref:.2f}x -> {t_ours / t_ref:.2f}x |")
            print(f"ratio: {bench}: {key[0]}: {t_ours / b_ours:.2f}", file=sys.stderr)


if __name__ == "__main__":
    assert BENCH_DIR.exists()
    main()
