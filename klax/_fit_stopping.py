"""When a fit stops early: scipy's `ftol` and `gtol` tests, and the checks of a fit's arguments."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klax import _checks
from klax import _fit_tree
from klax._fit_step import all_finite


class StoppingRule(NamedTuple):
  """When a fit has converged: scipy's `ftol` and `gtol` tests (None: that test is off)."""

  tolerance: float | None
  gradient_tolerance: float | None

  def met(self, previous_value, value, grads) -> jax.Array:
    """|fₜ₋₁ − fₜ| ≤ tolerance · max(|fₜ₋₁|, |fₜ|, 1)  or  maxᵢ |∂ᵢfₜ| ≤ gradient_tolerance."""
    met = jnp.array(False)
    if self.tolerance is not None:
      scale = jnp.maximum(jnp.maximum(jnp.abs(previous_value), jnp.abs(value)), 1.0)
      met |= jnp.abs(previous_value - value) <= self.tolerance * scale
    if self.gradient_tolerance is not None:
      largest = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)])
      met |= largest <= self.gradient_tolerance
    return met & jnp.isfinite(value) & all_finite(grads)


def _tolerance(value, name: str) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
    raise TypeError(f"`{name}` must be a float or None, got {type(value).__name__}.")
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
  return float(value)


def stopping_rule(tolerance, gradient_tolerance) -> StoppingRule | None:
  """The stopping rule, checked (None without one)."""
  rule = StoppingRule(
    _tolerance(tolerance, "tolerance"), _tolerance(gradient_tolerance, "gradient_tolerance")
  )
  if rule.tolerance is None and rule.gradient_tolerance is None:
    return None
  return rule


def variance_draws(draws) -> int:
  """`gradient_variance_draws`, checked: 0 (off) or an integer of at least 2."""
  if not isinstance(draws, bool) and isinstance(draws, int | np.integer) and draws == 0:
    return 0
  draws = _checks.positive_int(draws, "gradient_variance_draws")
  if draws < 2:
    raise ValueError(f"`gradient_variance_draws` must be 0 (off) or at least 2, got {draws}.")
  return draws


def schedule(num_steps, trace_every) -> tuple[int, int]:
  """`num_steps` and `trace_every`, checked: positive, and `trace_every` divides `num_steps`."""
  num_steps = _checks.positive_int(num_steps, "num_steps")
  trace_every = _checks.positive_int(trace_every, "trace_every")
  if num_steps % trace_every:
    raise ValueError(f"`trace_every`={trace_every} must divide `num_steps`={num_steps}.")
  return num_steps, trace_every


def batch_size(params_batch) -> int:
  """B, the leading axis shared by every array of `params_batch`, checked."""
  leaves = [x for x in jax.tree.leaves(params_batch) if _fit_tree.is_param_array(x)]
  if not leaves:
    raise ValueError("`params_batch` has no arrays.")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      "Every array in `params_batch` must have the same leading (batch) axis, got leading "
      f"sizes {sorted(str(s) for s in sizes)}."
    )
  size = sizes.pop()
  if size == 0:
    raise ValueError("`params_batch` has no members: its leading (batch) axis has size 0.")
  return size
