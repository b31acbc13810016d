"""KL penalties for policy optimisation, from the log-probabilities of sampled tokens.

A response y = (y_1 … y_T) is sampled from a sampler S (the policy π_θ itself, on-policy, or a
behaviour policy μ that generated the batch, off-policy). Per token t (mask m_t), the inputs are
log π_θ(y_t | y_<t), log π_ref(y_t | y_<t) and, off-policy, log μ(y_t | y_<t); only π_θ depends
on the parameters. Write a, b for the first and second distributions of the stated KL:
direction="reverse" is KL(π_θ ‖ π_ref) (a = π_θ, the usual RLHF penalty), "forward" is
KL(π_ref ‖ π_θ) (a = π_ref), and f_t = log a_t − log b_t. The objective is

- level="sequence": KL(a ‖ b) between the distributions of whole responses,
  Σ_t E_{y≤t ~ a}[f_t], with the importance weight w_t = Π_{u≤t, m_u} a_u / S_u;
- level="token": Σ_t E_{y<t ~ S}[KL(a(· | y<t) ‖ b(· | y<t))], the per-position KL at the
  prefixes the sampler visits (their distribution held fixed), with w_t = a_t / S_t.

`kl_penalty` returns per token `value` = w_t k(f_t), with k1(f) = f or k3(f) = f + e^{−f} − 1
(e^{−f} − 1 has mean 0 under a), and `surrogate`, numerically equal to `value` but carrying the
gradient. The value is an unbiased estimate of each position's share of the objective,
E_S[Σ_t m_t value_t] = J(θ); the surrogate is the same expression with w_t and f_t
differentiated (the sampler's log-probabilities held constant), so its expectation equals J(θ)
as a function of θ, and therefore E_S[∇ Σ_t m_t surrogate_t] = ∇J exactly. Average over
sequences with `reduce_tokens(..., mode="seq-mean-token-sum")` for an unbiased estimate of ∇J.

Placement. In the loss: add β · the reduced `surrogate` to the policy loss. In the reward:
subtract β · `value` (estimator k1, direction reverse) from the per-token rewards of
REINFORCE/PPO; with returns Σ_{u≥t} the policy gradient Σ_t ∇log π_t Σ_{u≥t} value_u is then
unbiased for the sequence-level ∇KL(π ‖ π_ref) on-policy (the reward carries no gradient; the
algorithm's own score function supplies it). k3 in the reward is biased: its expectation is the
KL, but its own dependence on θ (E_π[∇k3] = −∇KL(π_ref ‖ π) per token) is dropped.

`kl_estimator_loss` is what trl and verl compute: w_t k(ℓ_t), ℓ_t = log π_t − log π_ref,
differentiated as written. Its gradient per token (at the sampled prefixes) is, in expectation,

| estimator | on-policy (w = 1, no gradient)     | off-policy (w = π/μ, differentiated) |
|-----------|------------------------------------|--------------------------------------|
| k1        | 0: no KL gradient (biased)         | ∇KL(π ‖ π_ref): unbiased             |
| k2        | ∇KL(π ‖ π_ref): unbiased           | biased: ∇ E_π[ℓ²/2], not of a KL     |
| k3        | ∇KL(π_ref ‖ π), the other direction| ∇KL(π ‖ π_ref): unbiased             |

so k3 as an on-policy loss minimises the forward KL (mass-covering), not the penalty it reports
(Tang & Munos 2025, arXiv 2506.09477). Passing `behaviour_log_probs=stop_gradient(log_probs)`
turns the on-policy k1 and k3 losses into unbiased ones. None of it is the sequence-level
gradient, which also credits each token with the later tokens' KL (`kl_penalty`,
level="sequence").

Edge values: masked tokens contribute 0 (their inputs are not looked at, gradients 0); a
response with no unmasked token gives 0. NaN in an unmasked input gives NaN at that token (and,
level="sequence", at every later token, through w). A log-probability of −inf gives ±inf or NaN
as the arithmetic does; nothing is clamped. Importance weights are exp(Σ log-ratios), unclipped:
they overflow to inf when the policies are far apart, which is the estimator's real variance.
"""

from __future__ import annotations

import functools
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp

from klax import _checks
from klax._monte_carlo import kl_from_log_ratio
from klax._policy_tokens import option
from klax._policy_tokens import per_token_values
from klax._policy_tokens import token_mask

DIRECTIONS = ("reverse", "forward")
LEVELS = ("sequence", "token")
PENALTY_ESTIMATORS = ("k1", "k3")


class KLPenalty(NamedTuple):
  """Per-token KL penalty terms, shape [..., T] (0 at masked tokens).

  Attributes:
    value: w_t k(f_t), without gradient: an unbiased estimate of each token's share of the stated
      KL (put it in the reward, or log it).
    surrogate: equal to `value`, with the gradient whose expectation is that of the stated KL
      (sum it over tokens and add it to the loss).
  """

  value: jax.Array
  surrogate: jax.Array


def _inputs(log_probs, ref_log_probs, behaviour_log_probs, mask):
  """Checked per-token arrays with masked positions set to 0, and the broadcast mask."""
  log_probs = per_token_values(log_probs, "log_probs")
  arrays = {"ref_log_probs": ref_log_probs, "behaviour_log_probs": behaviour_log_probs}
  checked = []
  for name, array in arrays.items():
    if array is None:
      checked.append(None)
      continue
    array = per_token_values(array, name)
    _checks.same_shape(log_probs, array, "log_probs", name)
    checked.append(array)
  mask = token_mask(mask, log_probs.shape)
  dtype = jnp.result_type(*[x for x in (log_probs, *checked) if x is not None])
  clean = [
    None if x is None else jnp.where(mask, x, 0.0).astype(dtype) for x in (log_probs, *checked)
  ]
  return (*clean, mask)


@functools.partial(jax.jit, static_argnames=("direction", "level", "estimator"))
def kl_penalty(
  log_probs,
  ref_log_probs,
  mask=None,
  *,
  behaviour_log_probs=None,
  direction: Literal["reverse", "forward"] = "reverse",
  level: Literal["sequence", "token"] = "sequence",
  estimator: Literal["k1", "k3"] = "k1",
) -> KLPenalty:
  """Per-token KL penalty values and a surrogate whose gradient is unbiased for the stated KL.

  With a, b = (π_θ, π_ref) for "reverse" or (π_ref, π_θ) for "forward", f_t = log a_t − log b_t,
  S the sampler (μ if `behaviour_log_probs` is given, else π_θ held constant) and w_t =
  exp(Σ_{u≤t, m_u} (log a_u − log S_u)) at level "sequence", exp(log a_t − log S_t) at "token":

    value_t = stop_gradient(w_t k(f_t)),  surrogate_t = w_t k(f_t),
    k1(f) = f,  k3(f) = f + e^{−f} − 1,

  and E_S[Σ_t m_t surrogate_t] = J(θ) identically in θ (J: the sequence KL(a ‖ b), or the
  per-position KL summed over the sampled prefixes; see the module docstring), so the expected
  gradient of Σ_t m_t surrogate_t is ∇J.

  Args:
    log_probs: float array [..., T], log π_θ(y_t | y_<t) of the sampled tokens.
    ref_log_probs: the same for the reference policy.
    mask: optional boolean array broadcastable to [..., T]; True at response tokens.
    behaviour_log_probs: optional log μ(y_t | y_<t) of the policy that sampled the batch (for
      off-policy correction); None means on-policy.
    direction: "reverse", KL(π_θ ‖ π_ref), or "forward", KL(π_ref ‖ π_θ).
    level: "sequence" (the KL of whole responses) or "token" (per position, prefixes fixed).
    estimator: "k1" or "k3" (the same expected value and gradient; k3's value never negative
      on-policy and of lower variance when π_θ ≈ π_ref).

  Returns:
    `KLPenalty(value, surrogate)`, each of shape [..., T] (float32 for low-precision input).

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> pen = klax.kl_penalty(jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.25, 0.5])))
    >>> [round(v, 4) for v in pen.value.tolist()]
    [0.6931, 0.0]
  """
  direction = option(direction, "direction", DIRECTIONS)
  level = option(level, "level", LEVELS)
  estimator = option(estimator, "estimator", PENALTY_ESTIMATORS)
  log_pi, log_ref, log_mu, mask = _inputs(log_probs, ref_log_probs, behaviour_log_probs, mask)
  log_s = jax.lax.stop_gradient(log_pi if log_mu is None else log_mu)
  log_a, log_b = (log_pi, log_ref) if direction == "reverse" else (log_ref, log_pi)
  log_w = log_a - log_s
  if level == "sequence":
    log_w = jnp.cumsum(log_w, axis=-1)
  terms = jnp.exp(log_w) * kl_from_log_ratio(log_a - log_b, estimator)
  surrogate = jnp.where(mask, terms, 0.0)
  return KLPenalty(jax.lax.stop_gradient(surrogate), surrogate)


@functools.partial(jax.jit, static_argnames=("estimator",))
def kl_estimator_loss(
  log_probs,
  ref_log_probs,
  mask=None,
  *,
  estimator: Literal["k1", "k2", "k3"],
  behaviour_log_probs=None,
) -> jax.Array:
  """The per-token k1/k2/k3 of ℓ_t = log π_t − log π_ref,t used directly as a loss (trl, verl).

  Computes w_t k(ℓ_t) with w_t = exp(log π_t − log μ_t) (differentiated through π_θ) when
  `behaviour_log_probs` is given, else w_t = 1; 0 at masked tokens. Its value estimates KL(π ‖
  π_ref) per token (k2 with bias), but its gradient is unbiased for that KL only on-policy with
  k2 and off-policy with k1 or k3; on-policy k3 gives the gradient of KL(π_ref ‖ π), on-policy
  k1 none at all, off-policy k2 a biased one (the table in the module docstring). For a
  gradient that is right in every case use `kl_penalty`.

  Args:
    log_probs: float array [..., T], log π_θ(y_t | y_<t) of the sampled tokens.
    ref_log_probs: the same for the reference policy.
    mask: optional boolean array broadcastable to [..., T]; True at response tokens.
    estimator: "k1", "k2" or "k3" (keyword, required).
    behaviour_log_probs: optional log μ(y_t | y_<t) of the policy that sampled the batch.

  Returns:
    A float array [..., T] of per-token losses.
  """
  estimator = _checks.estimator_name(estimator)
  log_pi, log_ref, log_mu, mask = _inputs(log_probs, ref_log_probs, behaviour_log_probs, mask)
  terms = kl_from_log_ratio(log_pi - log_ref, estimator)
  if log_mu is not None:
    terms = jnp.exp(log_pi - jax.lax.stop_gradient(log_mu)) * terms
  return jnp.where(mask, terms, 0.0)
