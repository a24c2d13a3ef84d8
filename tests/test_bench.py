"""The benchmarks still run: bench/settle.py in miniature (a few settlements, half a second of load, a
300-record reconciliation), ending with its figure lines. The figures themselves are for the closing
notes (the full run); here only that every bench completes, balances and prints what it promises."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_settlement_bench_runs_and_prints_its_figures():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "settle.py"), "--rounds", "2", "--per-round", "2", "--duration", "0.5",
         "--records", "300", "--reconcile-runs", "1", "--modes", "ours-processes,ours-processes:2102"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("figure ")}
    assert {"settle_ratio", "platform_settlements_per_s", "platform_p99_ms", "platform_2102_only_per_s",
            "reconcile_100k_s"} <= figures
    assert "like for like: yes" in result.stdout and "balanced, 300 settlements counted" in result.stdout


def test_the_service_bench_runs_and_prints_its_figures():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "service.py"), "--rounds", "3", "--per-round", "5", "--duration", "0.5",
         "--seed", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("figure ")}
    assert {"service_http_added_ms", "service_ws_added_ms", "service_http_ratio", "service_ws_ratio",
            "inprocess_read_ms", "service_4_clients_calls_per_s", "service_4_clients_p99_ms"} <= figures
    assert "answers: " in result.stdout and "WRONG" not in result.stdout


def test_the_startup_bench_runs_and_a_read_imports_only_what_it_uses():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "startup.py"), "-n", "1"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("figure ")}
    assert {"startup_python_pass_ms", "startup_help_ms", "startup_read_json_ms", "startup_read_json_ratio"} <= figures
    # what keeps `sscard read` fast: the platform's client, SQLite, the service and the flows stay unimported
    loaded = subprocess.run([sys.executable, "-c", "import sys; from sscard.terminal.cli import main\n"
                             "try:\n    main(['read', '--json'])\nexcept SystemExit:\n    pass\n"
                             "print(' '.join(sorted(sys.modules)), file=sys.stderr)"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    modules = set(loaded.stderr.split())
    assert "sscard.terminal.card" in modules
    assert not modules & {"httpx", "sqlite3", "starlette", "uvicorn", "sscard.terminal.flows", "sscard.terminal.online"}
