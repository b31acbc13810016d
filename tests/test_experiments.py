"""Experiments run from the command line at their quick size and reproduce the seeds' claims."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # Subprocesses: see CONTRIBUTING.md for the fast loop.


def _run_script(name, out):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  subprocess.run(
    [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--quick", "--out", str(out)],
    check=True,
    env=env,
    capture_output=True,
    timeout=600,
  )
  return json.loads((out / "results.json").read_text())


def test_forward_vs_reverse_reproduces_seed_001(tmp_path):
  payload = _run_script("forward_vs_reverse", tmp_path)
  results = payload["results"]
  # The seed's printed solutions (scipy L-BFGS-B on the grid), to the printed decimals.
  assert abs(results["forward"]["mu"] - 1.17e-4) < 1e-5
  assert round(results["forward"]["sigma"], 5) == 3.26839
  assert round(results["forward"]["kl"], 5) == 0.31247
  assert round(results["reverse"]["mu"], 5) == -2.86331
  assert round(results["reverse"]["sigma"], 5) == 1.36376
  assert round(results["reverse"]["kl"], 5) == 0.66646
  seed_cross = {
    "KL(P||Q_forward)": 0.31247,
    "KL(P||Q_reverse)": 3.98727,
    "KL(Q_forward||P)": 0.51217,
    "KL(Q_reverse||P)": 0.66647,
  }
  for key, value in seed_cross.items():
    assert round(results["cross"][key], 5) == value, key
  # The truncation finding: on a wide grid the forward σ is the exact √(1.2² + 3²) = 3.2311.
  widest = results["grid_truncation"][-1]
  assert abs(widest["sigma"] - 3.2311) < 1e-4
  # Multi-start: the seed's reverse solution is a local minimum; the global one is the wide
  # N(0, 2.8687²) with KL 0.48106 (scipy quadrature + Nelder–Mead: see tests/test_fit.py).
  basins = results["multi_start"]["basins"]
  assert len(basins) == 3
  assert abs(basins[0]["mu"]) < 0.05 and abs(basins[0]["sigma"] - 2.8687) < 0.02
  assert abs(basins[0]["kl"] - 0.48106) < 1e-3
  for basin in basins[1:]:
    assert abs(abs(basin["mu"]) - 2.8633) < 0.02 and abs(basin["kl"] - 0.66646) < 1e-3
  assert (tmp_path / "densities.png").stat().st_size > 10_000
  assert (tmp_path / "basins.png").stat().st_size > 10_000
  assert payload["versions"]["jax"] and payload["config"]["lbfgs_steps"] > 0
  assert payload["key_seed"] == 20261122 and payload["devices"] and payload["wall_time_s"] > 0
  assert payload["x64"]  # The command runs in float64, as the seed's scipy computation does.


def test_mle_is_forward_kl_rates_and_identity(tmp_path):
  results = _run_script("mle_is_forward_kl", tmp_path)["results"]
  assert -0.65 < results["slope_param_error"] < -0.35  # n^(-1/2)
  assert -1.4 < results["slope_kl_gap"] < -0.7  # 1/n
  assert abs(results["kl_at_optimum"] - 0.31456) < 1e-4  # min KL, at μ = 0, σ = √(1.2² + 3²)
  for row in results["rows"]:  # Held-out NLL − H(p⋆) is the forward KL, to Monte Carlo precision.
    assert row["identity_gap"] < results["identity_tolerance"]
  assert (tmp_path / "convergence.png").stat().st_size > 10_000


def test_elbo_identity_holds_and_the_fit_recovers_the_posterior(tmp_path):
  results = _run_script("elbo_identity", tmp_path)["results"]
  for row in results["sweep"]:
    assert abs(row["sum"] - results["log_evidence"]) < 4 * row["elbo_stderr"] + 1e-4
  assert abs(results["fitted"]["mean"] - results["posterior"]["mean"]) < 2e-3
  assert abs(results["fitted"]["scale"] - results["posterior"]["scale"]) < 5e-3
  assert results["trace"][-1]["kl"] < 1e-3 < results["trace"][0]["kl"]


def test_kl_estimators_bias_claims(tmp_path):
  results = _run_script("kl_estimators", tmp_path)["results"]
  rows = results["gaussian"] + results["categorical"]
  for row in rows:  # k1 and k3 unbiased within 4 standard errors.
    for name in ("k1", "k3"):
      assert abs(row[name]["bias"]) < 4 * row[name]["stderr"], (row["pair"], name)
  large = [row for row in rows if row["true_kl"] > 1.0]
  assert large and all(row["k2"]["bias"] > 10 * row["k2"]["stderr"] for row in large)


def test_runner_writes_a_report(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  command = [
    sys.executable,
    "-m",
    "experiments",
    "--quick",
    "--out",
    str(tmp_path),
    "kl_estimators",
  ]
  subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
  report = (tmp_path / "report.md").read_text()
  assert "## kl_estimators" in report and "k3 bias" in report
  assert "![kl_estimators: bias_and_sd](kl_estimators/bias_and_sd.png)" in report
  help_text = subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "kl_estimators.py"), "--help"],
    capture_output=True,
    text=True,
    env=env,
    check=True,
  ).stdout
  assert "--quick" in help_text and "--out" in help_text


def test_gradient_estimators_variances(tmp_path):
  results = _run_script("gradient_estimators", tmp_path)["results"]
  at_start = results["versus_samples"]
  for i in range(len(results["sample_counts"])):  # Score > score with baseline > reparam.
    assert (
      at_start["score, no baseline"][i]
      > at_start["score, leave-one-out"][i]
      > at_start["reparam"][i]
    )
  slope = np.polyfit(np.log(results["sample_counts"]), np.log(at_start["reparam"]), 1)[0]
  assert -1.2 < slope < -0.8  # Variance ∝ 1/S.
  along = results["along_fit"]  # Variances recorded by klax.fit along each estimator's own fit.
  end = {name: values[-1] for name, values in along["variance"].items()}
  assert end["stl"] < 1e-2 * end["reparam"]  # STL's variance vanishes at the exact posterior.
  assert end["score, leave-one-out"] < 1e-2 * end["reparam"]
  assert along["diverged_at"]["stl"] == along["diverged_at"]["reparam"] == -1
  assert along["kl"]["stl"] < 1e-3


def test_mode_seeking_phase_bifurcates(tmp_path):
  rows = {
    round(row["d"], 2): row
    for row in _run_script("mode_seeking_phase", tmp_path)["results"]["rows"]
  }
  overlapping = [b for b in rows[0.5]["basins"] if b["kind"] == "minimum"]
  assert len(overlapping) == 1 and abs(overlapping[0]["mu"]) < 0.05  # One covering solution.
  separated = [b for b in rows[5.0]["basins"] if b["kind"] == "minimum"]
  assert abs(abs(separated[0]["mu"]) - 5.0) < 0.05  # Far apart: the global fit sits on one mode
  assert abs(separated[0]["kl"] - np.log(2)) < 1e-3  # … with KL = log 2.
  assert {round(np.sign(b["mu"])) for b in separated if abs(b["mu"]) > 1} == {-1, 1}


def test_alpha_interpolation_widens_from_reverse_to_forward(tmp_path):
  rows = {
    row["alpha"]: row for row in _run_script("alpha_interpolation", tmp_path)["results"]["rows"]
  }
  assert abs(rows[1.0]["mu"] + 2.8633) < 0.03 and abs(rows[1.0]["sigma"] - 1.3637) < 0.03
  assert rows[0.5]["sigma"] > 2.5 and abs(rows[0.5]["mu"]) < 0.3  # Toward N(0, 3.231²).


def test_bayesian_logistic_regression_against_nuts(tmp_path):
  rows = {
    row["method"]: row
    for row in _run_script("bayesian_logistic_regression", tmp_path)["results"]["rows"]
  }
  reference = rows["NUTS (reference)"]["held_out_lpd"]
  for name in ("full-rank normal", "RQ-spline flow"):
    assert rows[name]["mean_error_in_sd"] < 0.25, name  # Means within a quarter of a posterior sd.
    assert 0.8 < rows[name]["sd_ratio"] < 1.15, name
  assert rows["mean-field normal"]["sd_ratio"] < 0.8  # Mean field under-disperses (reverse KL).
  assert rows["full-rank normal"]["elbo"] > rows["mean-field normal"]["elbo"]
  for row in rows.values():
    assert abs(row["held_out_lpd"] - reference) < 0.02


def test_kl_regularised_policy_estimators_and_placements(tmp_path):
  payload = _run_script("kl_regularised_policy", tmp_path)
  assert payload["claims"] and all(c["held"] for c in payload["claims"])
  results = payload["results"]
  rows = {row["variant"]: row for row in results["rows"]}
  for row in rows.values():  # Unbiased variants reach π* ∝ π_ref exp(r/β); the others do not.
    if row["unbiased"]:
      assert row["kl_to_optimum"] < 1e-5, row["variant"]
    else:
      assert row["kl_to_optimum"] > 1e-2, row["variant"]
  k3 = rows["k3 as a loss"]
  assert k3["kl_to_optimum"] > 3 * rows["k2 as a loss"]["kl_to_optimum"]
  g = results["gradients"]  # On-policy identities, to float32 rounding; k3's gradient differs.
  assert g["k1_reward_token_vs_k2_loss"] < 1e-5
  assert g["k1_reward_returns_vs_kl_penalty_sequence"] < 1e-5
  assert g["k3_loss_vs_k2_loss"] > 0.1


def test_importing_forward_vs_reverse_leaves_float32_alone():
  import jax

  from experiments import forward_vs_reverse

  assert not jax.config.jax_enable_x64  # A notebook kernel that imports it stays float32.
  assert forward_vs_reverse.log_p(jax.numpy.float32(0.0)).dtype == jax.numpy.float32
