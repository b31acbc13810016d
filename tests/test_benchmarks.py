"""The benchmark scripts run at their --quick size (harness correctness only; never timed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script, out):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  command = [
    sys.executable,
    str(ROOT / "experiments" / "benchmarks" / script),
    "--quick",
    "--out",
    str(out),
  ]
  subprocess.run(command, check=True, env=env, capture_output=True, timeout=900)


def test_fit_throughput_harness(tmp_path):
  _run("fit_throughput.py", tmp_path)
  payload = json.loads((tmp_path / "fit_throughput.json").read_text())
  methods = {row["method"] for row in payload["rows"]}
  assert {
    "klax.fit_batch reverse",
    "hand-written reverse",
    "TFP fit_surrogate reverse",
    "scipy L-BFGS-B grid (loop)",
  } <= methods
  measured = [row for row in payload["rows"] if "skipped" not in row]
  assert all(row["run_s"] > 0 and row["fits_per_s"] > 0 for row in measured)
  assert payload["versions"]["jax"]


def test_fit_batch_scale_harness(tmp_path):
  _run("fit_batch_scale.py", tmp_path)
  rows = json.loads((tmp_path / "fit_batch_scale.json").read_text())["rows"]
  assert [row["restarts"] for row in rows] == [1_000, 10_000]
  assert all(row["diverged"] == 0 and row["peak_rss_gib"] > 0 for row in rows)
