"""`deploykit --help` wall time against its baseline, `python -c 'import click'`, in one run.

Target: the median of deploykit --help at most 1.5 × the baseline's median on the same machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 15


def median_seconds(args: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    baseline = median_seconds([sys.executable, "-c", "import click"])
    help_time = median_seconds([sys.executable, "-m", "deploykit", "--help"])
    plan_time = median_seconds([sys.executable, "-m", "deploykit", "plan", "-p", "rtx3060", "--json"])
    ratio = help_time / baseline
    print(f"{'command':40} {'median ms':>10} {'× baseline':>11}")
    print(f"{'python -c import click (baseline)':40} {baseline * 1000:10.1f} {1.0:11.2f}")
    print(f"{'deploykit --help':40} {help_time * 1000:10.1f} {ratio:11.2f}")
    print(f"{'deploykit plan -p rtx3060 --json':40} {plan_time * 1000:10.1f} {plan_time / baseline:11.2f}")
    print(f"target: --help ≤ 1.50 × baseline — {'met' if ratio <= 1.5 else 'MISSED'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
