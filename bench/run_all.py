"""Run the fixed, short benchmark suite and rewrite its sections of docs/BENCHMARKS.md.

    .venv/bin/python bench/run_all.py          (also: make bench)

Each stage's script records its own table (machine, date, command, numbers). Run it on an idle
machine: the numbers are wall-clock throughputs on shared cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SUITE = (
    ["prepare.py", "--record"],
    ["render.py", "--frames", "24", "--record"],
    ["train.py", "--minutes", "10"],
    ["dub.py", "--preset", "st2d-328", "--seconds", "3", "--shard-frames", "25"],
)


def main() -> int:
    failed = []
    for args in SUITE:
        print(f"== bench/{' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]]).returncode != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
