"""Diagnostics for fits: which optima a multi-start `fit_batch` reached, and how often."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from klax._fit import FitResult


class Basin(NamedTuple):
  """One distinct optimum reached by a multi-start fit.

  Attributes:
    params: the mean parameters of its members (a pytree like one member's parameters).
    count: how many fits ended in it.
    members: their indices in the batch.
    loss_mean: mean final loss of the members.
    loss_std: standard deviation of the members' final losses.
    value: `value_fn(params)` when one was given (e.g. an exact KL by quadrature), else None.
  """

  params: Any
  count: int
  members: np.ndarray
  loss_mean: float
  loss_std: float
  value: float | None


def _member_features(params_batch, features) -> np.ndarray:
  if features is not None:
    return np.asarray(jax.vmap(features)(params_batch), np.float64).reshape(_size(params_batch), -1)
  leaves = [
    np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree.leaves(params_batch)
  ]
  return np.concatenate(leaves, axis=1)


def _size(params_batch) -> int:
  return int(jax.tree.leaves(params_batch)[0].shape[0])


def basin_report(
  result: FitResult,
  *,
  tolerance: float = 0.1,
  features: Callable[[Any], Any] | None = None,
  final_losses=None,
  value_fn: Callable[[Any], Any] | None = None,
) -> list[Basin]:
  """Groups the members of a `fit_batch` result by the optimum they reached.

  Members are taken in order of increasing final loss; each joins the first basin whose
  representative (its best member) lies within `tolerance` of it in the max-norm of the
  feature vector, and otherwise starts a new basin. Features default to all parameters
  flattened; pass `features(params) -> array` to compare in another space (e.g. (μ, σ) of the
  distribution instead of raw (μ, log σ), or sorted mixture components to undo label switching).
  Diverged fits are left out.

  Args:
    result: the `FitResult` of `klax.fit_batch`.
    tolerance: distance (max-norm, in feature units) within which two fits share a basin.
    features: optional map from one member's params to a feature vector.
    final_losses: optional [B] array of final losses to rank and summarise by (default: the
      last recorded loss; pass an average over the last steps for noisy Monte Carlo losses).
    value_fn: optional function of a basin's mean params giving a reference value (e.g. the
      exact KL by quadrature or closed form), stored in `Basin.value`.

  Returns:
    The basins, best (lowest mean final loss, or lowest `value` when `value_fn` is given) first.
  """
  if tolerance <= 0:
    raise ValueError(f"`tolerance` must be positive, got {tolerance}.")
  losses = np.asarray(result.losses[:, -1] if final_losses is None else final_losses, np.float64)
  keep = np.flatnonzero((np.asarray(result.diverged_at) < 0) & np.isfinite(losses))
  vectors = _member_features(result.params, features)
  groups: list[list[int]] = []
  for index in keep[np.argsort(losses[keep], kind="stable")]:
    for group in groups:
      if np.max(np.abs(vectors[index] - vectors[group[0]])) <= tolerance:
        group.append(int(index))
        break
    else:
      groups.append([int(index)])
  basins = []
  for group in groups:
    members = np.array(group)
    params = jax.tree.map(lambda x, m=members: np.asarray(x)[m].mean(axis=0), result.params)
    value = None if value_fn is None else float(value_fn(params))
    basins.append(
      Basin(
        params,
        len(members),
        members,
        float(losses[members].mean()),
        float(losses[members].std()),
        value,
      )
    )
  key = (lambda b: b.value) if value_fn is not None else (lambda b: b.loss_mean)
  return sorted(basins, key=key)
