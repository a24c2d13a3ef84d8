"""Bench: how long a command takes as a whole process, beside the interpreter doing nothing.

    .venv/bin/python bench/startup.py [-n 15]

Runs, alternating so that the machine's load falls on each alike, ``python -c pass`` (the peer: the
interpreter alone), ``sscard --help`` and ``sscard read --json`` (the built-in virtual card: start-up,
the read, the JSON), each ``-n`` times in its own process, and prints the medians and the ratio to
the peer. Start-up is mostly imports: a command imports only its own module (terminal/cli/main.py,
``COMMAND_MODULES``); ``python -X importtime -c "from sscard.terminal.cli import main; main()" read --json`` shows what is left.
Ends with one line per headline figure: ``figure NAME VALUE UNIT``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SSCARD = [sys.executable, "-c", "import sys; from sscard.terminal.cli import main; sys.exit(main())"]
RUNS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "sscard --help": [*SSCARD, "--help"],
    "sscard read --json": [*SSCARD, "read", "--json"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=15, help="runs of each (default 15)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:  # the virtual card's state, not the user's
        env = {**os.environ, "SSCARD_SIM_STATE": state}
        times: dict[str, list[float]] = {name: [] for name in RUNS}
        for _ in range(args.n):
            for name, command in RUNS.items():
                started = time.perf_counter()
                subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
                times[name].append((time.perf_counter() - started) * 1000)
    peer = statistics.median(times["python -c pass"])
    print(f"{'process':<22}{'median ms':>10}{'min ms':>9}{'x peer':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<22}{median:>10.1f}{min(samples):>9.1f}{median / peer:>8.2f}")
    print(f"figure startup_python_pass_ms {peer:.1f} ms")
    print(f"figure startup_help_ms {statistics.median(times['sscard --help']):.1f} ms")
    print(f"figure startup_read_json_ms {statistics.median(times['sscard read --json']):.1f} ms")
    print(f"figure startup_read_json_ratio {statistics.median(times['sscard read --json']) / peer:.2f} x")


if __name__ == "__main__":
    main()
