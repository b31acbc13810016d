"""KL-regularised policy optimisation with each KL estimator and placement, against the optimum.

A tabular autoregressive policy over responses of T tokens from a vocabulary of V maximises
E_π[r(y)] − β KL(π ‖ π_ref), whose optimum is π*(y) ∝ π_ref(y) exp(r(y)/β). Every expectation is
an exact sum over all V^T responses weighted by the sampler's probabilities (held constant), so
each variant follows its estimator's *expected* gradient, with no Monte Carlo noise: where it
settles is where that expected gradient vanishes. The reward term's gradient is the same exact
policy gradient in every variant; only the KL term differs. Off-policy variants sample from a
lagged copy of the policy, refreshed every `lag` steps.

Claims reproduced: on-policy, k1 in the reward (each token's penalty credited to that token) and
k2 as a loss give the same gradient; k1 in the reward with returns, and `klax.kl_penalty`'s
sequence-level surrogate, give the gradient of the sequence KL and reach π*; k3 as a loss
settles at a different policy (it follows the gradient of KL(π_ref ‖ π)).

Run: python experiments/kl_regularised_policy.py [--quick] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

if __package__ in (None, ""):  # Run as a script: make the `experiments` package importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import klax
from experiments import _cli
from experiments._claims import Claim

SEED = 20261202  # Every random number of this experiment derives from it.
# name: (KL term, off-policy, unbiased for the sequence objective, the KL its gradient is of)
VARIANTS = {
  "k1 in the reward, returns Σ_{u≥t}": ("reward_returns", False, True, "KL(π ‖ π_ref)"),
  "kl_penalty(level='sequence'), k3 value": ("penalty_sequence", False, True, "KL(π ‖ π_ref)"),
  "k1 in the reward, per-token credit": ("reward_token", False, False, "per-token KL(π ‖ π_ref)"),
  "k2 as a loss": ("k2_loss", False, False, "per-token KL(π ‖ π_ref)"),
  "k3 as a loss": ("k3_loss", False, False, "per-token KL(π_ref ‖ π)"),
  "importance-corrected k3 (w = π/sg π)": ("k3_corrected", False, False, "per-token KL(π ‖ π_ref)"),
  "exact per-token KL (full vocabulary)": ("exact_token", False, False, "per-token KL(π ‖ π_ref)"),
  "off-policy kl_penalty(level='sequence')": ("penalty_sequence", True, True, "KL(π ‖ π_ref)"),
  "off-policy k3 as a loss, uncorrected": (
    "k3_loss",
    True,
    False,
    "≈ per-token KL(π_ref ‖ π) once μ ≈ π",
  ),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """Problem size, regularisation and optimiser."""

  vocabulary: int = 3
  length: int = 2
  beta: float = 0.5
  num_steps: int = 3000
  learning_rate: float = 0.05
  lag: int = 10
  out: str = "results/kl_regularised_policy"

  @classmethod
  def quick(cls, **overrides) -> Config:
    return cls(**{"num_steps": 400, **overrides})


def _problem(config: Config):
  v, t = config.vocabulary, config.length
  seqs = np.array(list(itertools.product(range(v), repeat=t)))
  prefix = np.stack([seqs[:, :i] @ (v ** np.arange(i)[::-1]) for i in range(t)], axis=1)
  rng = np.random.default_rng(SEED)
  ref = [jnp.asarray(rng.normal(size=(v**i, v)), jnp.float32) for i in range(t)]
  reward = jnp.asarray(rng.normal(size=len(seqs)), jnp.float32)

  def log_probs(tables):
    cols = [jax.nn.log_softmax(tables[i])[prefix[:, i], seqs[:, i]] for i in range(t)]
    return jnp.stack(cols, axis=1)

  log_ref = log_probs(ref)
  log_opt = jnp.sum(log_ref, 1) + reward / config.beta
  log_opt = log_opt - jax.nn.logsumexp(log_opt)
  return seqs, prefix, ref, reward, log_probs, log_ref, log_opt


KINDS = ("reward_returns", "reward_token", "penalty_sequence", "k2_loss", "k3_loss", "k3_corrected")
KINDS = (*KINDS, "exact_token")


def _kl_terms(theta, sampler_tables, problem, config):
  """E_S[Σ_t KL-term_t] of every kind (in `KINDS` order), by enumeration: the gradient of each
  is that kind's expected KL gradient (S: the sampler, its probabilities held constant)."""
  _, prefix, ref, _, log_probs, log_ref, _ = problem
  log_pi = log_probs(theta)
  log_s = jax.lax.stop_gradient(log_probs(sampler_tables))  # = log π itself, on-policy.
  weight = jnp.exp(jnp.sum(log_s, axis=1))
  value = klax.kl_penalty(log_pi, log_ref, behaviour_log_probs=log_s, level="token").value
  returns = jnp.cumsum(value[:, ::-1], axis=1)[:, ::-1]
  sequence = klax.kl_penalty(log_pi, log_ref, behaviour_log_probs=log_s, estimator="k3")
  corrected = jax.lax.stop_gradient(log_pi)
  exact = [
    klax.kl_divergence_logits(theta[i][prefix[:, i]], ref[i][prefix[:, i]])
    for i in range(config.length)
  ]
  terms = (
    log_pi * returns,  # k1 in the reward, REINFORCE with returns Σ_{u≥t}.
    log_pi * value,  # k1 in the reward, each token credited with its own penalty.
    sequence.surrogate,
    klax.kl_estimator_loss(log_pi, log_ref, estimator="k2"),
    klax.kl_estimator_loss(log_pi, log_ref, estimator="k3"),
    klax.kl_estimator_loss(log_pi, log_ref, estimator="k3", behaviour_log_probs=corrected),
    jnp.stack(exact, axis=1),  # The full-vocabulary KL at every sampled prefix.
  )
  return jnp.stack([jnp.sum(weight * jnp.sum(t, axis=1)) for t in terms])


def _train(problem, config):
  """Every variant at once (vmapped over variants, one compiled scan): [variants, steps, 3]."""
  _, _, ref, reward, log_probs, log_ref, log_opt = problem
  optimizer = optax.adam(config.learning_rate)
  kinds = jnp.array([KINDS.index(v[0]) for v in VARIANTS.values()])
  off = jnp.array([v[1] for v in VARIANTS.values()])

  def loss(theta, lagged, kind, off_policy):
    log_pi = jnp.sum(log_probs(theta), axis=1)
    pg = -jnp.sum(jax.lax.stop_gradient(jnp.exp(log_pi)) * reward * log_pi)  # ∇ −E_π[r]
    sampler = jax.tree.map(lambda a, b: jnp.where(off_policy, a, b), lagged, theta)
    terms = _kl_terms(theta, sampler, problem, config)
    return pg + config.beta * jnp.sum(jax.nn.one_hot(kind, len(KINDS)) * terms)

  def metrics(theta):
    log_pi = jnp.sum(log_probs(theta), axis=1)
    pi = jnp.exp(log_pi)
    return jnp.stack(
      [
        klax.kl_divergence_logits(log_pi, log_opt),
        jnp.sum(pi * reward),
        jnp.sum(pi * (log_pi - jnp.sum(log_ref, axis=1))),
      ]
    )

  def step(carry, i, kind, off_policy):
    theta, lagged, state = carry
    lagged = jax.tree.map(lambda a, b: jnp.where(i % config.lag == 0, a, b), theta, lagged)
    grads = jax.grad(loss)(theta, lagged, kind, off_policy)
    updates, state = optimizer.update(grads, state, theta)
    theta = optax.apply_updates(theta, updates)
    return (theta, lagged, state), metrics(theta)

  def one(kind, off_policy):
    theta0 = [jnp.array(r) for r in ref]  # Start at the reference policy.
    carry = (theta0, theta0, optimizer.init(theta0))
    body = functools.partial(step, kind=kind, off_policy=off_policy)
    return jax.lax.scan(body, carry, jnp.arange(config.num_steps))[1]

  return np.asarray(jax.jit(jax.vmap(one))(kinds, off))


def _initial_gradients(problem, config):
  """The KL terms' gradients at one policy: the on-policy identities, to float32 rounding."""
  rng = np.random.default_rng(SEED + 1)
  theta = [jnp.asarray(rng.normal(size=r.shape), jnp.float32) for r in problem[2]]
  jacobian = jax.jit(jax.jacobian(lambda th: _kl_terms(th, th, problem, config)))(theta)
  flat = np.concatenate([np.reshape(x, (len(KINDS), -1)) for x in jacobian], axis=1)
  grads = dict(zip(KINDS, flat, strict=True))

  def rel(a, b):
    return float(np.linalg.norm(grads[a] - grads[b]) / np.linalg.norm(grads[b]))

  return {
    "k1_reward_token_vs_k2_loss": rel("reward_token", "k2_loss"),
    "k1_reward_returns_vs_kl_penalty_sequence": rel("reward_returns", "penalty_sequence"),
    "k3_loss_vs_k2_loss": rel("k3_loss", "k2_loss"),
    "k2_loss_vs_sequence_kl": rel("k2_loss", "penalty_sequence"),
  }


def run(config: Config) -> dict:
  problem = _problem(config)
  reward, log_ref, log_opt = problem[3], problem[5], problem[6]
  opt = np.exp(np.asarray(log_opt))
  optimum = {
    "reward": float(np.sum(opt * reward)),
    "kl_to_ref": float(np.sum(opt * (np.asarray(log_opt) - np.asarray(jnp.sum(log_ref, 1))))),
  }
  traces = _train(problem, config)
  rows = []
  for (name, (_, off_policy, unbiased, gradient_of)), trace in zip(
    VARIANTS.items(), traces, strict=True
  ):
    rows.append(
      {
        "variant": name,
        "off_policy": off_policy,
        "unbiased": unbiased,
        "gradient_of": gradient_of,
        "kl_to_optimum": float(trace[-1, 0]),
        "reward": float(trace[-1, 1]),
        "kl_to_ref": float(trace[-1, 2]),
        "trace": trace[:: max(1, config.num_steps // 100)].tolist(),
      }
    )
  # The reward-KL frontier: the optimum's (KL, reward) for a range of β.
  frontier = []
  for beta in np.geomspace(0.05, 5.0, 25):
    lo = np.asarray(jnp.sum(log_ref, 1) + reward / beta)
    p = np.exp(lo - lo.max())
    p /= p.sum()
    kl = float(np.sum(p * (np.log(p) - np.asarray(jnp.sum(log_ref, 1)))))
    frontier.append([kl, float(np.sum(p * np.asarray(reward)))])
  gradients = _initial_gradients(problem, config)
  return {"optimum": optimum, "rows": rows, "frontier": frontier, "gradients": gradients}


def format_table(results: dict) -> str:
  header = (
    "| variant | sampling | expected gradient of | for ∇(E r − β KL) | KL(π ‖ π*) | E_π[r] "
    "| KL(π ‖ π_ref) |"
  )
  lines = [header, "|---|---|---|---|---|---|---|"]
  for row in results["rows"]:
    lines.append(
      f"| {row['variant']} | {'off' if row['off_policy'] else 'on'}-policy | "
      f"{row['gradient_of']} | "
      f"{'unbiased' if row['unbiased'] else 'biased'} | {row['kl_to_optimum']:.2e} | "
      f"{row['reward']:.4f} | {row['kl_to_ref']:.4f} |"
    )
  opt = results["optimum"]
  lines.append(f"| π* (exact) | — | — | — | 0 | {opt['reward']:.4f} | {opt['kl_to_ref']:.4f} |")
  g = results["gradients"]
  lines.append("")
  lines.append(
    "Relative differences of the expected KL gradients at a random policy: k1 in the reward "
    f"(per-token credit) vs k2 as a loss {g['k1_reward_token_vs_k2_loss']:.1e}; k1 in the reward "
    f"(returns) vs kl_penalty(sequence) {g['k1_reward_returns_vs_kl_penalty_sequence']:.1e}; "
    f"k3 vs k2 as losses {g['k3_loss_vs_k2_loss']:.2f}; per-token k2 vs the sequence KL "
    f"{g['k2_loss_vs_sequence_kl']:.2f}."
  )
  return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
  plt = _cli.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
  frontier = np.array(results["frontier"])
  axes[1].plot(frontier[:, 0], frontier[:, 1], "k-", lw=2, label="optimal frontier (π*_β)")
  for row in results["rows"]:
    trace = np.array(row["trace"])
    style = "-" if row["unbiased"] else "--"
    axes[0].semilogy(np.maximum(trace[:, 0], 1e-12), style, label=row["variant"])
    axes[1].plot(trace[:, 2], trace[:, 1], style, label=row["variant"])
  axes[0].set_title("KL(π ‖ π*) along training (exact expected gradients)")
  axes[0].set_xlabel("step / (num_steps / 100)")
  axes[1].set_title("reward–KL: trajectories and the frontier")
  axes[1].set_xlabel("KL(π ‖ π_ref)")
  axes[1].set_ylabel("E_π[r]")
  axes[0].legend(fontsize="xx-small")
  _cli.save(fig, path)


def claims(results: dict) -> list[Claim]:
  rows = {row["variant"]: row for row in results["rows"]}
  g = results["gradients"]
  unbiased = [r for r in rows.values() if r["unbiased"]]
  worst = max(r["kl_to_optimum"] for r in unbiased)
  k2, k3 = rows["k2 as a loss"], rows["k3 as a loss"]
  return [
    Claim(
      "on-policy, k1 in the reward and k2 as a loss give the same gradient",
      "relative difference of the expected gradients at a random policy "
      f"{g['k1_reward_token_vs_k2_loss']:.1e} (< 1e-5)",
      g["k1_reward_token_vs_k2_loss"] < 1e-5,
    ),
    Claim(
      "k1 in the reward with returns and kl_penalty(level='sequence') give the sequence KL's "
      "gradient and reach π* ∝ π_ref exp(r/β), on- and off-policy",
      f"gradients differ by {g['k1_reward_returns_vs_kl_penalty_sequence']:.1e}; the largest "
      f"final KL(π ‖ π*) of the {len(unbiased)} unbiased variants is {worst:.1e} (< 1e-5)",
      g["k1_reward_returns_vs_kl_penalty_sequence"] < 1e-5 and worst < 1e-5,
    ),
    Claim(
      "k3 as a loss settles at a different policy",
      f"its final KL(π ‖ π*) is {k3['kl_to_optimum']:.3f} (k2 as a loss: "
      f"{k2['kl_to_optimum']:.3f}, per-token only), its reward {k3['reward']:.3f} against the "
      f"optimum's {results['optimum']['reward']:.3f}; its gradient differs from k2's by "
      f"{g['k3_loss_vs_k2_loss']:.2f}",
      k3["kl_to_optimum"] > 3 * k2["kl_to_optimum"] and g["k3_loss_vs_k2_loss"] > 0.1,
    ),
  ]


def main(argv=None) -> dict:
  description = __doc__.splitlines()[0]
  return _cli.main(
    "kl_regularised_policy",
    description,
    Config,
    run,
    format_table,
    {"kl_to_optimum.png": plot},
    argv,
    seed=SEED,
    claims=claims,
  )


if __name__ == "__main__":
  main()
