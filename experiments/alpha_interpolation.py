"""From mode seeking to mass covering: Rényi-α fits of N(μ, σ²) to seed 001's two-mode target.

Each fit minimises `klax.renyi_loss` (the variational Rényi bound of Li & Turner 2016) from the
seed's start (μ, σ) = (−3, 1.2). α → 1 is the ELBO, i.e. reverse KL (mode seeking: the seed's
N(−2.863, 1.364²)); as α decreases the fit widens and moves toward the forward-KL solution
N(0, 3.231²) (α = 0 is the importance-weighted bound, which with S samples is nearly flat in q
once q covers both modes, so its fit is wide and loosely determined). α < 0 is not run:
`renyi_loss` refuses it, because the S-sample estimate of that upper bound on log Z is biased
low and minimising it does not minimise D_α (an earlier run at α = −1 ended at N(−3.12, 0.969²),
whose exact L_α is 42.15 against 0.2253 at N(0, 3.23²): narrower, on one mode).

Run: python experiments/alpha_interpolation.py [--quick] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import itertools
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


@dataclasses.dataclass(frozen=True)
class Config:
  """The α values and fit settings."""

  alphas: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5, 0.25, 0.0)
  num_samples: int = 256
  num_steps: int = 3_000
  out: str = "results/alpha_interpolation"

  @classmethod
  def quick(cls, **overrides) -> Config:
    return cls(**{"alphas": (1.0, 0.5, 0.0), "num_steps": 1_500, **overrides})


def log_p(x):
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2)) - jnp.log(2.0)


def run(config: Config) -> dict:
  family = klax.families.normal()
  start = {"loc": jnp.array(-3.0), "log_scale": jnp.array(math.log(1.2))}
  rows = []
  for i, alpha in enumerate(config.alphas):
    loss = klax.renyi_loss(family, log_p, config.num_samples, alpha)
    optimizer = optax.adam(optax.cosine_decay_schedule(0.03, config.num_steps))
    result = klax.fit(loss, start, optimizer, jax.random.fold_in(KEY, i), config.num_steps)
    q = family.dist(result.params)
    rows.append(
      {
        "alpha": alpha,
        "mu": float(q.loc),
        "sigma": float(q.scale),
        "final_loss": float(result.losses[-1]),
      }
    )
  return {
    "rows": rows,
    "forward": {"mu": 0.0, "sigma": math.sqrt(1.2**2 + 9.0)},
    "reverse_seed": {"mu": -2.86331, "sigma": 1.36376},
  }


def format_table(results: dict) -> str:
  lines = ["| α | μ | σ |", "|---|---|---|"]
  lines += [f"| {r['alpha']:g} | {r['mu']:.3f} | {r['sigma']:.3f} |" for r in results["rows"]]
  lines += [
    "",
    f"Reverse KL (seed 001): μ = {results['reverse_seed']['mu']}, σ = {results['reverse_seed']['sigma']}; "
    f"forward KL: μ = 0, σ = {results['forward']['sigma']:.4f}.",
    "",
    "The figure shows Rényi-α fits of N(μ, σ²) to the two-mode target, all started on the left",
    "mode. At α = 1 (the ELBO) the fit stays on that mode, as reverse KL does; for α below 1 it",
    "covers both modes, close to the forward-KL optimum N(0, 3.23²), widening as α falls. At α = 0",
    "(the importance-weighted bound) the fit is wider and off-centre: once q covers both modes that",
    "bound is nearly flat in q, so it pins q down only loosely. α < 0 is not run: `renyi_loss`",
    "refuses α outside [0, 1]. An earlier run at α = −1 ended at N(−3.12, 0.969²), whose exact L_α",
    "is 42.15 against 0.2253 at N(0, 3.23²) (quadrature): the S-sample estimate of that upper",
    "bound on log Z is biased low, most so where q misses mass that p has, so minimising it",
    "narrowed q onto one mode instead of covering both.",
  ]
  return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
  plt = _cli.pyplot()
  x = np.linspace(-9, 9, 1000)
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  ax.fill_between(x, np.exp(np.asarray(log_p(x))), color="grey", alpha=0.35, label="P(x)")
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(results["rows"])))
  for row, color in zip(results["rows"], colors, strict=True):
    label = f"α = {row['alpha']:g}: N({row['mu']:.2f}, {row['sigma']:.2f}²)"
    ax.plot(x, norm.pdf(x, row["mu"], row["sigma"]), color=color, label=label)
  ax.plot(x, norm.pdf(x, 0.0, results["forward"]["sigma"]), "k--", label="forward KL optimum")
  ax.set_xlabel("x")
  ax.set_ylabel("density")
  ax.set_title("Rényi-α fits: α = 1 seeks one mode, smaller α cover more mass")
  ax.legend(fontsize="small")
  _cli.save(fig, path)


def claims(results: dict) -> list[Claim]:
  rows = {r["alpha"]: r for r in results["rows"]}
  elbo, seed = rows[1.0], results["reverse_seed"]
  middle = [r for a, r in rows.items() if 0 < a < 1]
  sigmas = [r["sigma"] for r in sorted(middle, key=lambda r: -r["alpha"])]
  return [
    Claim(
      "at α = 1 (the ELBO) the fit stays on the mode it started on, as reverse KL does",
      f"N({elbo['mu']:.3f}, {elbo['sigma']:.3f}²) against the seed's reverse solution "
      f"N({seed['mu']}, {seed['sigma']}²) (within 0.05)",
      abs(elbo["mu"] - seed["mu"]) < 0.05 and abs(elbo["sigma"] - seed["sigma"]) < 0.05,
    ),
    Claim(
      "for 0 < α < 1 the fit covers both modes and widens as α falls, toward forward KL",
      f"α = {', '.join(format(r['alpha'], 'g') for r in middle)}: |μ| < 0.2 and σ = "
      f"{', '.join(format(s, '.2f') for s in sigmas)} increasing, below the forward-KL σ = "
      f"{results['forward']['sigma']:.2f}",
      all(abs(r["mu"]) < 0.2 for r in middle)
      and all(a < b for a, b in itertools.pairwise(sigmas))
      and sigmas[-1] < results["forward"]["sigma"],
    ),
  ]


def main(argv=None) -> dict:
  description = __doc__.splitlines()[0]
  return _cli.main(
    "alpha_interpolation",
    description,
    Config,
    run,
    format_table,
    {"densities.png": plot},
    argv,
    seed=SEED,
    claims=claims,
  )


if __name__ == "__main__":
  main()
