"""The benchmark scripts run at their --quick size (harness correctness only; never timed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # Subprocesses: see CONTRIBUTING.md for the fast loop.


def _run(script, out, *extra):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  command = [
    sys.executable,
    str(ROOT / "experiments" / "benchmarks" / script),
    "--quick",
    "--out",
    str(out),
    *extra,
  ]
  subprocess.run(command, check=True, env=env, capture_output=True, timeout=900)


def test_fit_throughput_harness_on_two_cpu_devices(tmp_path):
  # One run (one interpreter, one compile of each fit) checks the harness and the sharded path.
  _run("fit_throughput.py", tmp_path, "--cpu-devices", "2")
  payload = json.loads((tmp_path / "fit_throughput_2cpu.json").read_text())
  assert len(payload["devices"]) == 2
  methods = {row["method"] for row in payload["rows"]}
  assert {
    "klax.fit_batch reverse",
    "hand-written reverse",
    "TFP fit_surrogate reverse",
    "klax.fit_batch lbfgs grid",
    "klax.fit lbfgs grid (loop)",
    "scipy L-BFGS-B grid (loop)",
  } <= methods
  measured = [row for row in payload["rows"] if "skipped" not in row]
  assert all(row["run_s"] > 0 and row["fits_per_s"] > 0 for row in measured)
  # Compile time apart from run time: every klax first call compiles its fit.
  assert all(row["compile_s"] >= 0 and row["first_call_extra_s"] >= 0 for row in measured)
  assert all(row["compile_s"] > 0 for row in measured if row["method"].startswith("klax"))
  # NumPyro comes with the `benchmarks` extra (part of `test`): its rows are measured, not skipped.
  assert {"NumPyro SVI reverse (loop)", "NumPyro SVI reverse (jit(vmap))"} <= {
    row["method"] for row in measured
  }
  assert payload["versions"]["jax"]
  # From the same starts klax's L-BFGS (with its stopping rule) lands where scipy's does.
  assert payload["grid_optima"]["same_optimum"] == payload["grid_optima"]["batch"] == 2


def test_fit_throughput_cases_select_rows(tmp_path):
  _run("fit_throughput.py", tmp_path, "--cases", "forward")
  payload = json.loads((tmp_path / "fit_throughput.json").read_text())
  assert len(payload["devices"]) == 1
  assert {row["method"] for row in payload["rows"]} == {
    "klax.fit_batch forward",
    "hand-written forward",
  }
  assert "grid_optima" not in payload and "optima_independent" not in payload


def test_fit_batch_scale_harness(tmp_path):
  _run("fit_batch_scale.py", tmp_path)
  rows = json.loads((tmp_path / "fit_batch_scale.json").read_text())["rows"]
  assert [row["restarts"] for row in rows] == [1_000, 10_000]
  assert all(row["diverged"] == 0 and row["peak_rss_gib"] > 0 for row in rows)


def test_divergence_throughput_harness(tmp_path):
  _run("divergence_throughput.py", tmp_path)
  payload = json.loads((tmp_path / "divergence_throughput.json").read_text())
  cases = {(row["case"], row.get("method")) for row in payload["rows"]}
  assert ("mvn", "klax.kl_divergence") in cases and ("logits", "klax.kl_divergence_logits") in cases
  logits = [r for r in payload["rows"] if r["case"] == "logits"]
  assert {r["logit_noise"] for r in logits} == {0.3, 1e-3}
  # klax is exact against float64 also where p ≈ q (the hand formula is not checked: it is not).
  assert all(r["max_relative_error"] < 1e-4 for r in logits if r["method"].startswith("klax"))
  ceilings = [r for r in payload["rows"] if r["case"] == "logits_exponential_ceiling"]
  assert [r["batch"] for r in ceilings] == sorted({r["batch"] for r in logits})
  assert all(r["seconds"] > 0 and r["fraction_of_bandwidth"] > 0 for r in ceilings)
  assert any(row["case"] == "knn" for row in payload["rows"])
  mvn = [r for r in payload["rows"] if r["case"] == "mvn" and "first_values" in r]
  by_d = {}
  for row in mvn:  # Every method computes the same KLs.
    by_d.setdefault(row["d"], []).append(row["first_values"])
  for values in by_d.values():
    for other in values[1:]:
      np.testing.assert_allclose(other, values[0], rtol=1e-3, atol=1e-3)
  assert payload["memory_bandwidth_gb_per_s"] > 0


def test_latency_harness(tmp_path):
  _run("latency.py", tmp_path)
  payload = json.loads((tmp_path / "latency.json").read_text())
  assert payload["import_s"] > 0 and payload["first_result_s"] > 0
  assert abs(payload["first_kl"] - 0.31247) < 1e-4  # Seed 001's forward KL on its grid.


def test_linear_kl_harness(tmp_path):
  _run("linear_kl.py", tmp_path)
  rows = json.loads((tmp_path / "linear_kl.json").read_text())["rows"]
  assert {(r["method"], r["mode"]) for r in rows} == {
    (m, mode)
    for m in (
      "klax.kl_divergence_linear",
      "dense kl_divergence_logits",
      "hand-written chunked loop",
    )
    for mode in ("value", "value+grad")
  }
  assert all(r["seconds"] > 0 and r["temp_gib"] >= 0 for r in rows)
  # The three ways compute the same KLs.
  for mode in ("value", "value+grad"):
    first = [r["first_values"] for r in rows if r["mode"] == mode]
    for other in first[1:]:
      np.testing.assert_allclose(other, first[0], rtol=1e-4)


def test_knn_scale_harness(tmp_path):
  _run("knn_scale.py", tmp_path)
  rows = json.loads((tmp_path / "knn_scale.json").read_text())["rows"]
  scale = [r for r in rows if r["case"] == "scale"]
  assert {(r["n"], r["k"]) for r in scale} == {(1000, 1), (1000, 5)}
  for row in scale:  # klax and scipy's cKDTree compute the same estimate.
    assert row["klax_s"] > 0 and row["scipy_s"] > 0
    np.testing.assert_allclose(row["klax"], row["scipy"], rtol=1e-4, atol=1e-4)
  bias = [r for r in rows if r["case"] == "bias"]
  assert len(bias) == 3 and all(np.isfinite(r["mean_error"]) for r in bias)
