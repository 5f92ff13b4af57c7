"""How long ``wmbench --help`` and ``wmbench list …`` take, next to a bare typer app (issue 15).

    python benchmarks/cli_startup.py [--repeat 7] [--prefix NAME=SCRIPT …]

Each command runs as a fresh ``python -m wmbench.cli …`` process (what the ``wmbench`` script does), rounds
interleaved, median wall clock printed.  The bare app is a one-command typer app with rich installed, the floor
any typer CLI pays.  ``--prefix NAME=SCRIPT`` adds a column run as ``python SCRIPT -m wmbench.cli …`` (a launcher
that points the imports at another checkout), to compare trees side by side on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """import typer

app = typer.Typer(add_completion=False)


@app.command()
def hello(name: str = "x") -> None:
    print(name)


@app.command()
def bye() -> None:
    print("bye")


app()
"""
COMMANDS = [["--help"], ["list", "attacks"], ["list", "methods"], ["list", "metrics"]]


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--prefix", nargs="*", default=[], metavar="NAME=SCRIPT")
    a = ap.parse_args()
    bare = Path(tempfile.mkdtemp()) / "bare_typer.py"
    bare.write_text(BARE)
    trees = {"this": [sys.executable]} | {
        p.split("=", 1)[0]: [sys.executable, p.split("=", 1)[1]] for p in a.prefix
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.repeat):
        times.setdefault(("bare typer", "--help"), []).append(_wall([sys.executable, str(bare), "--help"]))
        for tree, py in trees.items():
            for c in COMMANDS:
                times.setdefault((tree, " ".join(c)), []).append(_wall([*py, "-m", "wmbench.cli", *c]))
    floor = statistics.median(times[("bare typer", "--help")])
    print(f"# median of {a.repeat} fresh processes, wall seconds (× the bare typer app's --help)")
    print(f"{'bare typer':<12} {'--help':<14} {floor:6.2f} s")
    for tree in trees:
        for c in COMMANDS:
            m = statistics.median(times[(tree, " ".join(c))])
            print(f"{tree:<12} {' '.join(c):<14} {m:6.2f} s  ×{m / floor:.1f}")


if __name__ == "__main__":
    main()
