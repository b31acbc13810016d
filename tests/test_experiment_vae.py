"""experiments/vae_digits.py at its quick size: the VAE trainings agree and IWAE training helps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # A subprocess: see CONTRIBUTING.md for the fast loop.


def test_vae_digits_klax_matches_a_hand_written_vae_and_iwae_training_helps(tmp_path):
  subprocess.run(
    [sys.executable, "-m", "experiments.vae_digits", "--quick", "--out", str(tmp_path)],
    check=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    capture_output=True,
    timeout=600,
  )
  payload = json.loads((tmp_path / "results.json").read_text())
  results = payload["results"]
  assert [c["held"] for c in payload["claims"]] == [True, True, True], payload["claims"]
  assert "All 3 claims held" in (tmp_path / "table.md").read_text()
  by = {row["variant"]: row for row in results["rows"]}
  assert len(by) == 4
  for row in by.values():  # log p(x) ≥ L_K ≥ ELBO: the IWAE estimate lies above the ELBO.
    assert np.isfinite(row["elbo"]) and row["log_likelihood"] > row["elbo"]
    assert -30.0 < row["elbo"] < -10.0  # Binarised 8×8 digits: tens of nats, not hundreds.
  closed, sampled = by["klax ELBO, closed-form KL"], by["klax ELBO, sampled KL"]
  hand, iwae = by["hand-written ELBO"], by["klax IWAE"]
  assert abs(closed["log_likelihood"] - sampled["log_likelihood"]) < 0.5
  assert abs(closed["log_likelihood"] - hand["log_likelihood"]) < 1.0
  assert len(results["hand_written_other_keys"]) == 3
  assert iwae["log_likelihood"] > max(closed["log_likelihood"], sampled["log_likelihood"])
  images = results["images"]
  assert np.asarray(images["reconstructions"]).shape == (10, 64)
  assert 0.0 <= np.min(images["samples"]) and np.max(images["samples"]) <= 1.0
  assert (tmp_path / "digits.png").stat().st_size > 10_000


def test_claims_section_escapes_table_cells_and_concludes():
  from experiments._claims import Claim
  from experiments._claims import section

  text = section([Claim("a | b", "|x| < 1", True), Claim("c", "d", False)])
  assert "| a \\| b | \\|x\\| < 1 | yes |" in text
  assert text.endswith("1 of 2 claims held; not held: c")
  assert section([Claim("a", "b", True)]).endswith("All 1 claims held on this run.")
