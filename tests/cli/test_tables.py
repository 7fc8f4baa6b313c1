"""Result tables fit the terminal and say which run is which; CSV and JSON hold every value in full."""

import csv
import io
import json
import subprocess
import sys

from rich.console import Console

from priorguard._tables import RunRow, print_metrics, write_records

KEYS = ["deploy_return", "regret", "terminal_coverage90_deploy", "catastrophe_rate"]


def rows(points=4, seeds=3):
    out = []
    for p in range(points):
        for s in range(seeds):
            out.append(RunRow(f"{p:04d}{s:012d}", s, {"terminal.features": [f"feature_{p}"], "planner.veto.enabled": p % 2 == 0},
                              {"deploy_return": -0.0273 * p, "regret": float("nan") if s == 2 else 1.25, "catastrophe_rate": None,
                               "terminal_coverage90_deploy": 0.9}))
    return out


def render(width, fmt="table", data=None):
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None)
    print_metrics(console, "demo (runs/demo)", data or rows(), KEYS, fmt_name=fmt)
    return buffer.getvalue()


def test_a_sweep_table_fits_80_columns_and_names_its_points():
    text = render(80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "(1 of 3)" in text and "(3 of 3)" in text  # 12 runs split into tables of 4 columns
    for p in range(4):
        for s in range(3):
            assert f"p{p}/s{s}" in text
    assert "p3: terminal.features=['feature_3'], planner.veto.enabled=False" in text
    assert "n/a" in text and "nan" in text  # a missing metric and a NaN read differently
    wide = render(200)
    assert "(1 of" not in wide and max(len(line) for line in wide.splitlines()) <= 200


def test_csv_and_json_hold_full_run_ids_and_overrides():
    data = rows(2, 2)
    table = list(csv.DictReader(io.StringIO(render(80, "csv", data))))
    assert [r["run_id"] for r in table] == [r.run_id for r in data]
    assert json.loads(table[0]["overrides"]) == data[0].overrides and table[0]["deploy_return"] == "-0.0"
    records = json.loads(render(80, "json", data))
    assert records[1]["run_id"] == data[1].run_id and records[1]["overrides"] == data[1].overrides
    assert records[0]["catastrophe_rate"] is None and records[1]["regret"] == 1.25


def test_write_records_puts_extra_fields_before_the_metrics():
    buffer = io.StringIO()
    write_records(Console(file=buffer), [RunRow("abc", 0, {}, {"regret": 0.5}, {"status": "done"})], ["regret"], "csv")
    assert buffer.getvalue().splitlines() == ["run_id,seed,overrides,status,regret", "abc,0,{},done,0.5"]


def test_runs_lists_full_ids_and_refuses_an_unknown_format(tmp_path):
    from priorguard.store import ResultStore

    store = ResultStore(tmp_path)
    store.register("0123456789abcdef", experiment="x", env="none", seed=0, overrides={"a.b": 1})
    store.mark_done("0123456789abcdef", {"regret": 0.25})

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "priorguard.cli", "runs", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=120, env={"COLUMNS": "80", "PATH": ""})

    shown = cli()
    assert shown.returncode == 0, shown.stderr
    assert "0123456789abcdef" in shown.stdout and "p0: a.b=1" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    listed = json.loads(cli("--format", "json").stdout)
    assert listed[0]["run_id"] == "0123456789abcdef" and listed[0]["regret"] == 0.25 and listed[0]["status"] == "done"
    bad = cli("--format", "xml")
    assert bad.returncode == 2 and "--format must be one of table, csv, json" in bad.stderr


def test_ctrl_c_keeps_what_finished_and_leaves_the_interrupted_run_pending(tmp_path):
    import signal
    import time

    from tiny_sizes import tiny_args

    from priorguard.store import ResultStore

    proc = subprocess.Popen([sys.executable, "-m", "priorguard.cli", "run", "coin-shift", "--out", str(tmp_path),
                             "--seed", "0", *tiny_args("coin-shift")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,  # as from a terminal: a test run from a background job inherits an ignored SIGINT
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:  # interrupt once the run is under way
        if (tmp_path / "index.sqlite").exists() and any(r.status == "running" for r in ResultStore(tmp_path).records()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "0 of 1 run(s) done" in stderr and "Traceback" not in stderr
    assert [r.status for r in ResultStore(tmp_path).records()] == ["pending"]
