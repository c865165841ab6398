"""Benchmark 5: how long a process takes to load the code location, against the smallest Dagster definitions.

    python -m benchmarks.load_time [--repeat 7] [--source PATH]

Every Dagster run, code server and sensor tick starts a process that loads the definitions, so
this is paid many times a day. Each load runs in a fresh Python process on the DuckDB default:

- project:  `import census_stripe.definitions` and resolve its Definitions (every asset, check,
  job, sensor and resource), as `dagster definitions validate` does.
- smallest: the same for `dagster.Definitions` holding one asset: what any code location pays.

The two alternate, after one discarded warm-up each, and the medians are printed, with the
third-party packages that take longest to import in the project's load (`python -X importtime`).
`--source` loads another checkout of the project instead, e.g. an older commit, to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import print_table
from census_stripe.settings import PROJECT_ROOT

# Timed inside the child, from before its first import: interpreter start-up is the same for both.
# CPU time too, which other work on a shared machine disturbs far less than wall time.
_TIMED = """
import time
wall, cpu = time.perf_counter(), time.process_time()
{load}
print(time.perf_counter() - wall, time.process_time() - cpu)
"""
PROJECT = _TIMED.format(
    load="""
import census_stripe.definitions as definitions
definitions.defs.get_repository_def()
"""
)
SMALLEST = _TIMED.format(
    load="""
import dagster as dg

@dg.asset
def one_asset() -> None: ...

dg.Definitions(assets=[one_asset]).get_repository_def()
"""
)


def _child_env(source: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CENSUS_STRIPE_", "DAGSTER_"))}
    return {**env, "PYTHONPATH": str(source), "CENSUS_STRIPE_WAREHOUSE": "duckdb", "PYTHONWARNINGS": "ignore"}


def load_seconds(code: str, source: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one load in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=source, env=_child_env(source)
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading failed:\n{done.stderr[-3000:]}")
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def slowest_packages(source: Path, count: int) -> list[tuple[str, float]]:
    """The top-level packages whose import (with everything they import) takes longest."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROJECT],
        capture_output=True,
        text=True,
        cwd=source,
        env=_child_env(source),
    )
    seconds: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative_us, name = line.removeprefix("import time:").split("|")
        name = name.strip()
        if "." not in name and not name.startswith(("_", "census_stripe")):
            seconds[name] = max(seconds.get(name, 0), int(cumulative_us) / 1e6)
    return sorted(seconds.items(), key=lambda item: -item[1])[:count]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--source", type=Path, default=PROJECT_ROOT, help="the checkout of the project to load")
    args = parser.parse_args()
    source = args.source.resolve()
    load_seconds(PROJECT, source)
    load_seconds(SMALLEST, source)
    project, smallest = [], []
    for _ in range(args.repeat):
        project.append(load_seconds(PROJECT, source))
        smallest.append(load_seconds(SMALLEST, source))
    project_wall, project_cpu = (statistics.median(times) for times in zip(*project, strict=True))
    smallest_wall, smallest_cpu = (statistics.median(times) for times in zip(*smallest, strict=True))
    rows = [
        {"load": "project (census_stripe.definitions)", "wall s": f"{project_wall:.2f}", "CPU s": f"{project_cpu:.2f}"},
        {"load": "smallest Definitions", "wall s": f"{smallest_wall:.2f}", "CPU s": f"{smallest_cpu:.2f}"},
        {
            "load": "ratio",
            "wall s": f"{project_wall / smallest_wall:.1f}x",
            "CPU s": f"{project_cpu / smallest_cpu:.1f}x",
        },
    ]
    print_table(f"Code location load of {source}: medians of {args.repeat} fresh processes (2 cores)", rows)
    print("\nslowest imports in the project's load (seconds, cumulative):")
    for name, seconds in slowest_packages(source, 6):
        print(f"  {name:<20} {seconds:.2f}")


if __name__ == "__main__":
    main()
