"""Mode seeking as the modes separate: reverse-KL fits of N(μ, σ²) to ½N(−d, 1.2²) + ½N(d, 1.2²).

For each half-separation d, many reverse-KL fits from random starts run in one `klax.fit_batch`;
the end points are grouped into basins and each basin's exact KL(Q ‖ P) is computed by
quadrature. The bifurcation diagram shows the fitted μ against d: one central basin while the
modes overlap, side basins (one per mode) once they separate, and which basin is the global
minimum at each d. The forward-KL solution, μ = 0 and σ = √(1.2² + d²), is drawn for comparison.

Run: python experiments/mode_seeking_phase.py [--quick] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm

if __package__ in (None, ""):  # Run as a script: make the `experiments` package importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import klax
from experiments import _cli
from experiments._claims import Claim

SEED = 20261122  # Every key of this experiment derives from it; recorded in results.json.
KEY = jax.random.key(SEED)
LINE = jnp.linspace(-60.0, 60.0, 24_001)


@dataclasses.dataclass(frozen=True)
class Config:
  """Separations, starts per separation, fit settings."""

  half_separations: tuple[float, ...] = tuple(float(d) for d in np.linspace(0.0, 6.0, 25))
  num_starts: int = 256
  num_steps: int = 2_000
  num_samples: int = 64
  out: str = "results/mode_seeking_phase"

  @classmethod
  def quick(cls, **overrides) -> Config:
    sizes = {"half_separations": (0.5, 1.5, 3.0, 5.0), "num_starts": 48, "num_steps": 1_000}
    return cls(**{**sizes, **overrides})


def target(d: float):
  def log_p(x):
    return jnp.logaddexp(norm.logpdf(x, -d, 1.2), norm.logpdf(x, d, 1.2)) - jnp.log(2.0)

  return log_p


def _classify(log_p, theta) -> tuple[float, str]:
  """Exact KL(Q ‖ P) at θ = (μ, log σ) by quadrature, and whether θ is a local minimum of it
  (positive-definite Hessian) or a saddle that the fits were still crossing."""

  def exact_kl(t):
    return klax.kl_divergence_grid(
      lambda x: norm.logpdf(x, t[0], jnp.exp(t[1])), log_p, LINE, normalize=False
    )

  eigenvalues = np.linalg.eigvalsh(np.asarray(jax.hessian(exact_kl)(theta)))
  return float(exact_kl(theta)), "minimum" if eigenvalues.min() > 0 else "saddle"


def basins_at(d: float, config: Config, key) -> list[dict]:
  """Reverse-KL basins for half-separation d, with exact KLs, the global one first."""
  log_p = target(d)
  key_loc, key_scale, key_fit = jax.random.split(key, 3)
  starts = {
    "loc": jax.random.uniform(key_loc, (config.num_starts,), minval=-d - 3.0, maxval=d + 3.0),
    "log_scale": jax.random.uniform(key_scale, (config.num_starts,), minval=-1.0, maxval=1.7),
  }
  loss = klax.reverse_kl_loss(klax.families.normal(), log_p, config.num_samples)
  optimizer = optax.adam(optax.cosine_decay_schedule(0.05, config.num_steps))
  result = klax.fit_batch(
    loss, starts, optimizer, key_fit, config.num_steps, trace_every=config.num_steps
  )

  def distribution_space(params):
    return jnp.stack([params["loc"], jnp.exp(params["log_scale"])])

  summary = []
  for basin in klax.basin_report(result, tolerance=0.3, features=distribution_space):
    theta = jnp.array([basin.params["loc"], basin.params["log_scale"]])
    kl, kind = _classify(log_p, theta)
    sigma = float(np.exp(basin.params["log_scale"]))
    summary.append(
      {
        "mu": float(basin.params["loc"]),
        "sigma": sigma,
        "count": basin.count,
        "kl": kl,
        "kind": kind,
      }
    )
  summary.sort(key=lambda b: b["kl"])
  return summary, np.asarray(result.params["loc"]).tolist()


def run(config: Config) -> dict:
  rows = []
  for i, d in enumerate(config.half_separations):
    basins, fitted_mu = basins_at(d, config, jax.random.fold_in(KEY, i))
    rows.append(
      {
        "d": d,
        "basins": basins,
        "fitted_mu": fitted_mu,
        "forward": {"mu": 0.0, "sigma": math.sqrt(1.2**2 + d**2)},
      }
    )
  return {"rows": rows}


def format_table(results: dict) -> str:
  lines = [
    "Fits grouped by end point; each group's exact KL by quadrature, and its Hessian says whether it",
    "is a local minimum or a saddle the fits had not yet left. Global minimum first.",
    "",
    "| d | basins: μ, σ (fits) → KL(Q ‖ P) | forward σ |",
    "|---|---|---|",
  ]
  for row in results["rows"]:
    basins = "; ".join(
      f"{b['mu']:+.2f}, {b['sigma']:.2f} ({b['count']}) → {b['kl']:.4f}" for b in row["basins"]
    )
    lines.append(f"| {row['d']:.2f} | {basins} | {row['forward']['sigma']:.3f} |")
  return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
  plt = _cli.pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  for i, row in enumerate(results["rows"]):
    jitter = np.full(len(row["fitted_mu"]), row["d"])
    ax.scatter(
      jitter,
      row["fitted_mu"],
      s=6,
      color="tab:purple",
      alpha=0.3,
      label="reverse-KL fits" if i == 0 else None,
    )
    best = next(b for b in row["basins"] if b["kind"] == "minimum")
    ax.scatter(
      [row["d"]],
      [best["mu"]],
      marker="*",
      s=120,
      color="tab:red",
      label="global minimum" if i == 0 else None,
    )
  d = np.array([row["d"] for row in results["rows"]])
  ax.plot(d, d, "k:", linewidth=1, label="mode centres ±d")
  ax.plot(d, -d, "k:", linewidth=1)
  ax.plot(
    d, np.zeros_like(d), "tab:orange", linewidth=2, label="forward KL (μ = 0, σ = √(1.2² + d²))"
  )
  ax.set_xlabel("half-separation d of the modes (P = ½N(−d, 1.2²) + ½N(d, 1.2²))")
  ax.set_ylabel("fitted μ")
  ax.set_title("Reverse KL: one covering solution, then one solution per mode")
  ax.legend(fontsize="small", loc="upper left")
  _cli.save(fig, path)


def claims(results: dict) -> list[Claim]:
  rows = results["rows"]
  best = [row["basins"][0] for row in rows]
  covering = [row["d"] for row, b in zip(rows, best, strict=True) if abs(b["mu"]) < 0.5]
  seeking = [row["d"] for row, b in zip(rows, best, strict=True) if abs(b["mu"]) >= 0.5]
  last, kinds = best[-1], {b["kind"] for row in rows for b in row["basins"]}
  return [
    Claim(
      "for close modes the reverse-KL optimum covers both; past a critical separation it seeks one",
      f"global minimum centred (|μ| < 0.5) for d ≤ {max(covering):.2f}, on a mode for "
      f"d ≥ {min(seeking):.2f}"
      if seeking
      else "the global minimum never left the centre",
      bool(seeking) and max(covering) < min(seeking),
    ),
    Claim(
      "far apart, the mode-seeking solution is one component: KL(Q ‖ P) → log 2",
      f"d = {rows[-1]['d']:.2f}: N({last['mu']:.2f}, {last['sigma']:.2f}²), KL {last['kl']:.4f} "
      f"against log 2 = {math.log(2):.4f} (within 0.01)",
      abs(last["kl"] - math.log(2)) < 0.01,
    ),
    Claim(
      "every group of end points is a local minimum, not a saddle the fits had not yet left",
      "the Hessian of the exact KL at each group's centre is positive definite: kinds found "
      + ", ".join(sorted(kinds)),
      kinds == {"minimum"},
    ),
  ]


def main(argv=None) -> dict:
  description = __doc__.splitlines()[0]
  return _cli.main(
    "mode_seeking_phase",
    description,
    Config,
    run,
    format_table,
    {"bifurcation.png": plot},
    argv,
    seed=SEED,
    claims=claims,
  )


if __name__ == "__main__":
  main()
