"""Conditional families q_φ(z | x) for amortised inference: an MLP from x to a distribution's parameters."""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import jax.numpy as jnp

from klax import _checks
from klax._amortized import ConditionalFamily
from klax._families_flow import _mlp_apply
from klax._families_flow import _mlp_init
from klax._family import cached


@cached
def conditional_diag_normal(
  context_dim: int, d: int, *, hidden_sizes: Sequence[int] = (64,)
) -> ConditionalFamily:
  """Mean-field normal q_φ(z | x) = Π_i N(z_i; μ_φ(x)_i, σ_φ(x)_i²), an MLP encoder.

  [μ_φ(x), log σ_φ(x)] = MLP_φ(x), with GELU hidden layers of `hidden_sizes` and a last layer
  that starts at zero (so every x starts at q = N(0, I)). Params `{"encoder": [layers]}`, each
  layer `{"w", "b"}`; keep other entries (a decoder's) beside it in the same dict.

  Args:
    context_dim: the size of x (flattened).
    d: the dimension of z.
    hidden_sizes: the widths of the hidden layers.

  Returns:
    A `ConditionalFamily(init, dist)`: `init(key)` draws `{"encoder": ...}`, `dist(params, x)`
    builds a distrax `MultivariateNormalDiag` over z for one x.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> encoder = klax.families.conditional_diag_normal(64, 2)
    >>> q = encoder.dist(encoder.init(jax.random.key(0)), jnp.ones(64))
    >>> q.event_shape, round(float(q.log_prob(jnp.zeros(2))), 4)  # N(0, I) at the start
    ((2,), -1.8379)
  """
  context_dim = _checks.positive_int(context_dim, "context_dim")
  d = _checks.positive_int(d, "d")
  sizes = [context_dim, *(_checks.positive_int(h, "hidden_sizes") for h in hidden_sizes), 2 * d]

  def init(key):
    return {"encoder": _mlp_init(key, sizes)}

  def dist(params, x):
    out = _mlp_apply(params["encoder"], jnp.reshape(x, (context_dim,)))
    return distrax.MultivariateNormalDiag(out[:d], jnp.exp(out[d:]))

  return ConditionalFamily(init, dist)
