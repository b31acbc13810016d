"""KL divergence of any exponential family, as the Bregman divergence of its log-normaliser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def kl_divergence_exponential_family(
  log_normalizer: Callable[[Any], jax.Array], natural_params_p: Any, natural_params_q: Any
) -> jax.Array:
  """KL(p ‖ q) between two members of one exponential family, from its log-normaliser alone.

  For densities p_η(x) = h(x) exp(⟨η, T(x)⟩ − A(η)), the divergence is the Bregman divergence
  of the log-normaliser A (the base measure h and the statistics T cancel):

      KL(p_{η_p} ‖ p_{η_q}) = A(η_q) − A(η_p) − ⟨∇A(η_p), η_q − η_p⟩,

  because E_{η_p}[T(x)] = ∇A(η_p). ∇A is taken with `jax.grad`, so a new family needs only its
  A. This works for families that no library registers (any A you can write in JAX).

  Args:
    log_normalizer: A(η) -> scalar, for the natural parameters of one distribution (a pytree of
      arrays). Use `jax.vmap` over this function for batches.
    natural_params_p: η_p, a pytree of float arrays.
    natural_params_q: η_q, a pytree with the same structure and leaf shapes.

  Returns:
    A scalar.

  Raises:
    TypeError: `log_normalizer` is not callable.
    ValueError: η_p and η_q differ in pytree structure or in any leaf's shape (no silent
      broadcasting), or A does not return a scalar.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> poisson_a = lambda log_rate: jnp.exp(log_rate)  # A(η) = e^η for Poisson(λ = e^η)
    >>> kl = klax.kl_divergence_exponential_family(poisson_a, jnp.log(2.0), jnp.log(3.0))
    >>> print(f"{float(kl):.5f}")  # λ_p log(λ_p / λ_q) − λ_p + λ_q
    0.18907
  """
  if not callable(log_normalizer):
    raise TypeError(
      f"`log_normalizer` must be a callable A(η), got {type(log_normalizer).__name__}."
    )
  if jax.tree.structure(natural_params_p) != jax.tree.structure(natural_params_q):
    raise ValueError(
      "`natural_params_p` and `natural_params_q` must have the same pytree structure, got "
      f"{jax.tree.structure(natural_params_p)} and {jax.tree.structure(natural_params_q)}."
    )
  for path, (leaf_p, leaf_q) in _leaf_pairs(natural_params_p, natural_params_q):
    if jnp.shape(leaf_p) != jnp.shape(leaf_q):
      raise ValueError(
        "`natural_params_p` and `natural_params_q` must have the same shapes, leaf by leaf "
        f"(they are one distribution's parameters each), got {jnp.shape(leaf_p)} and "
        f"{jnp.shape(leaf_q)}{path}. Use `jax.vmap` for a batch."
      )
  a_q = log_normalizer(natural_params_q)
  if jnp.ndim(a_q) != 0:
    raise ValueError(f"`log_normalizer` must return a scalar, got shape {jnp.shape(a_q)}.")
  a_p, grad_a_p = jax.value_and_grad(log_normalizer)(natural_params_p)
  steps = jax.tree.map(
    lambda g, q, p: jnp.sum(g * (q - p)), grad_a_p, natural_params_q, natural_params_p
  )
  return a_q - a_p - sum(jax.tree.leaves(steps))


def _leaf_pairs(tree_p, tree_q):
  """((" at <path>" or "", (leaf of p, leaf of q))) for each leaf of two same-structure trees."""
  leaves_p = jax.tree_util.tree_flatten_with_path(tree_p)[0]
  leaves_q = jax.tree.leaves(tree_q)
  for (path, leaf_p), leaf_q in zip(leaves_p, leaves_q, strict=True):
    where = f" at {jax.tree_util.keystr(path)}" if path else ""
    yield where, (leaf_p, leaf_q)
