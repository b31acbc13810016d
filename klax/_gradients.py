"""The spread of stochastic gradients: how noisy an optimiser step is."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from klax import _checks


def gradient_variance(loss, params, key: jax.Array, num_draws: int) -> jax.Array:
  """Total variance of a stochastic gradient: tr Cov_k[∇_θ loss(θ, k)] over independent keys.

  Evaluates ∇_θ loss(params, k_j) for `num_draws` independent keys k_j (vmapped) and returns the
  sum over all parameter entries of the sample variance — the quantity that sets how noisy an
  optimiser step is, for comparing gradient estimators (`reverse_kl_loss(..., gradient=...)`)
  or sample sizes, at fixed parameters or along a fit. Jit-able.

  Args:
    loss: `loss(params, key) -> scalar`.
    params: the parameters (a pytree).
    key: a `jax.random` key, split into `num_draws` keys.
    num_draws: independent gradient draws (at least 2).

  Returns:
    A scalar.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> loss = lambda params, key: jnp.sum(params * jax.random.normal(key, params.shape))
    >>> round(float(klax.gradient_variance(loss, jnp.ones(2), jax.random.key(0), 50_000)), 1)
    2.0
  """
  num_draws = _checks.positive_int(num_draws, "num_draws")
  if num_draws < 2:
    raise ValueError(f"`num_draws` must be at least 2 to estimate a variance, got {num_draws}.")
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, jax.random.split(key, num_draws))
  return sum(
    jnp.sum(jnp.var(g.reshape(num_draws, -1), axis=0, ddof=1)) for g in jax.tree.leaves(grads)
  )
