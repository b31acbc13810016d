"""Basins of a multi-start fit: members grouped by the optimum they reached, ranked best first."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klax import _checks
from klax._fit import FitResult
from klax._monte_carlo import Estimate
from klax._monte_carlo import mean_and_stderr


class Basin(NamedTuple):
  """One distinct optimum reached by a multi-start fit.

  Attributes:
    params: the mean parameters of its members (a pytree like one member's parameters).
    count: how many fits ended in it.
    members: their indices in the batch.
    loss_mean: mean final (last recorded, or `final_losses`) loss of the members.
    loss_std: standard deviation of the members' final losses.
    value: `value_fn(params)` when one was given (e.g. an exact KL by quadrature), else None.
    evaluation: with `loss` and `key`, the members' loss re-evaluated at their final parameters
      with `num_evaluations` fixed keys: `Estimate(mean, stderr, pareto_k)` over the keys (the
      loss averaged over the members for each key); else None.
  """

  params: Any
  count: int
  members: np.ndarray
  loss_mean: float
  loss_std: float
  value: float | None
  evaluation: Estimate | None = None


def _member_features(params_batch, features, size: int) -> np.ndarray:
  if features is not None:
    return np.asarray(jax.vmap(features)(params_batch), np.float64).reshape(size, -1)
  leaves = [np.asarray(x, np.float64).reshape(size, -1) for x in jax.tree.leaves(params_batch)]
  return np.concatenate(leaves, axis=1)


def _evaluations(loss, params_batch, key, num_evaluations: int) -> np.ndarray:
  """loss(θ_i, k_j) for every member i and the same fixed keys k_j: [B, num_evaluations]."""
  keys = jax.random.split(_checks.prng_key(key, "key"), num_evaluations)
  over_keys = jax.vmap(loss, in_axes=(None, 0))
  table = jax.jit(lambda ps: jax.lax.map(lambda p: over_keys(p, keys), ps))(params_batch)
  table = np.asarray(table, np.float64)
  if table.shape != (_size(params_batch), num_evaluations):
    raise ValueError(f"`loss(params, key)` must return a scalar, got shape {table.shape[2:]}.")
  return table


def _size(params_batch) -> int:
  return int(jax.tree.leaves(params_batch)[0].shape[0])


def _report_inputs(result, final_losses):
  """(params batch, final losses or None, kept mask) from a FitResult or a batch of params."""
  if isinstance(result, FitResult):
    kept = np.asarray(result.diverged_at) < 0
    last = result.losses[:, -1] if final_losses is None else final_losses
    return result.params, last, kept
  leaves = jax.tree.leaves(result)
  if not leaves or any(np.ndim(x) == 0 for x in leaves):
    raise TypeError(
      "`result` must be the FitResult of klax.fit_batch or a pytree of arrays with a leading "
      f"member axis, got {type(result).__name__}."
    )
  if len({np.shape(x)[0] for x in leaves}) != 1:
    raise ValueError("`result`'s leaves must share their leading (member) axis.")
  return result, final_losses, None


def _check_report_arguments(params, tolerance, features, final_losses, value_fn, loss, key, num):
  _checks.finite_positive(tolerance, "tolerance")
  for name, fn in (("features", features), ("value_fn", value_fn), ("loss", loss)):
    _checks.callable_or_none(fn, name)
  size = _size(params)
  if final_losses is not None:
    final_losses = _checks.float_array(final_losses, "final_losses")
    if final_losses.shape != (size,):
      raise ValueError(f"`final_losses` must have shape [{size}], got {final_losses.shape}.")
  if (loss is None) != (key is None):
    raise ValueError("`loss` and `key` go together: pass both to re-evaluate, or neither.")
  if final_losses is None and loss is None:
    raise ValueError("With an array of params, pass `final_losses` (a loss or KL per member).")
  if _checks.positive_int(num, "num_evaluations") < 2:
    raise ValueError(f"`num_evaluations` must be at least 2 for a standard error, got {num}.")


@functools.partial(jax.jit, static_argnames="capacity")
def _group_scan(vectors: jax.Array, tolerance: jax.Array, capacity: int):
  """Sequential grouping as one compiled loop over members: (labels, number of basins)."""

  def step(carry, vector):
    sums, counts, groups = carry
    centroids = sums / jnp.maximum(counts, 1.0)[:, None]
    close = (jnp.max(jnp.abs(centroids - vector), axis=1) <= tolerance) & (
      jnp.arange(capacity) < groups
    )
    g = jnp.where(jnp.any(close), jnp.argmax(close), groups)
    sums = sums.at[g].add(vector, mode="drop")
    counts = counts.at[g].add(1.0, mode="drop")
    return (sums, counts, jnp.maximum(groups, g + 1)), g

  init = (jnp.zeros((capacity, vectors.shape[1]), vectors.dtype), jnp.zeros(capacity), 0)
  (_, _, groups), labels = jax.lax.scan(step, init, vectors)
  return labels, groups


def _group(vectors: np.ndarray, order: np.ndarray, tolerance: float) -> np.ndarray:
  """Basin label of each member in `order` (−1 for the rest): O(B · basins), running means."""
  labels = np.full(vectors.shape[0], -1, np.int64)
  if order.size == 0:
    return labels
  ordered = vectors[order] - vectors[order[0]]  # Centred on the best member: float32 suffices.
  capacity = 16
  while True:
    found, groups = _group_scan(jnp.asarray(ordered, jnp.float32), tolerance, capacity)
    if int(groups) <= capacity:
      labels[order] = np.asarray(found)
      return labels
    capacity = min(4 * capacity, max(int(order.size), capacity + 1))


def basin_report(
  result,
  *,
  tolerance: float = 0.1,
  features: Callable[[Any], Any] | None = None,
  final_losses=None,
  value_fn: Callable[[Any], Any] | None = None,
  loss: Callable[[Any, jax.Array], Any] | None = None,
  key: jax.Array | None = None,
  num_evaluations: int = 64,
) -> list[Basin]:
  """Groups the members of a multi-start fit by the optimum they reached, best first.

  Member i joins basin b when max_j |φ(θ_i)_j − c_b,j| ≤ tolerance, c_b = mean of φ over b's
  members (φ = `features`).

  Members are taken in order of increasing score; each joins the first basin whose centroid
  (the mean feature vector of its members so far) lies within `tolerance` of it in the max-norm,
  and otherwise starts a new basin. The work is O(B · basins) for B members (running means), so
  a million fits take seconds. Features default to all parameters flattened; pass
  `features(params) -> array` to compare in another space (e.g. (μ, σ) of the distribution
  instead of raw (μ, log σ), or sorted mixture components to undo label switching). Diverged
  fits, and fits whose score is not finite, are left out.

  The score of member i is, with `loss` and `key`, ē_i = (1/L) Σ_j loss(θ_i, k_j) over L =
  `num_evaluations` fixed keys shared by all members (a low-variance re-evaluation: use it for
  Monte Carlo losses, whose last recorded value is one noisy draw that can make a lucky member
  look best); otherwise its final loss (`final_losses`, default the last recorded loss of a
  `FitResult` — right for deterministic losses). Basins are ranked by `value` when `value_fn`
  is given, else by the mean score of their members (NaN values last).

  Args:
    result: the `FitResult` of `klax.fit_batch`, or the members' final params alone (a pytree
      of arrays with a leading member axis B, e.g. gathered from fits run elsewhere), which then
      needs `final_losses` or `loss` and `key`.
    tolerance: finite positive distance (max-norm, in feature units) within which two fits share
      a basin.
    features: optional map from one member's params to a feature vector.
    final_losses: optional [B] array of final losses (or KLs) to summarise (and, without `loss`,
      rank) by.
    value_fn: optional function of a basin's mean params giving a reference value (e.g. the
      exact KL by quadrature or closed form), stored in `Basin.value`.
    loss: optional `loss(params, key) -> scalar` (e.g. the loss that was fitted) to re-evaluate
      each member at its final params; needs `key`.
    key: a `jax.random` key, split into the `num_evaluations` evaluation keys.
    num_evaluations: L, the number of evaluation keys (at least 2).

  Returns:
    The basins, best first. Bad arguments raise `TypeError`/`ValueError` naming them (not
    jittable: a host-level driver).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> log_p = lambda x: jnp.logaddexp(-0.5 * (x + 3) ** 2, -0.5 * (x - 3) ** 2)
    >>> loss = klax.reverse_kl_loss(klax.families.normal(), log_p, 32)
    >>> starts = {"loc": jnp.array([-5.0, -4.0, -3.5, -2.0, 2.0, 3.5, 4.0, 5.0]), "log_scale": jnp.zeros(8)}
    >>> result = klax.fit_batch(loss, starts, optax.adam(0.05), jax.random.key(0), 300)
    >>> basins = klax.basin_report(result, tolerance=0.3, loss=loss, key=jax.random.key(1))
    >>> sorted((round(float(b.params["loc"])), b.count) for b in basins)
    [(-3, 4), (3, 4)]
  """
  params_batch, final, kept = _report_inputs(result, final_losses)
  _check_report_arguments(
    params_batch, tolerance, features, final, value_fn, loss, key, num_evaluations
  )
  size = _size(params_batch)
  table = None if loss is None else _evaluations(loss, params_batch, key, num_evaluations)
  scores = table.mean(axis=1) if table is not None else np.asarray(final, np.float64)
  losses = scores if final is None else np.asarray(final, np.float64)
  keep = np.isfinite(scores) if kept is None else kept & np.isfinite(scores)
  keep = np.flatnonzero(keep)
  vectors = _member_features(params_batch, features, size)
  labels = _group(vectors, keep[np.argsort(scores[keep], kind="stable")], tolerance)
  order = np.argsort(labels, kind="stable")
  bounds = np.searchsorted(labels[order], np.arange(labels.max(initial=-1) + 2))
  leaves, treedef = jax.tree.flatten(params_batch)
  leaves = [np.asarray(x) for x in leaves]
  basins = []
  for g in range(len(bounds) - 1):
    members = np.sort(order[bounds[g] : bounds[g + 1]])
    params = jax.tree.unflatten(treedef, [x[members].mean(axis=0) for x in leaves])
    value = None if value_fn is None else float(value_fn(params))
    evaluation = None
    if table is not None:
      evaluation = mean_and_stderr(jnp.asarray(table[members].mean(axis=0)), warn_as=None)
    basins.append(
      Basin(
        params,
        len(members),
        members,
        float(losses[members].mean()),
        float(losses[members].std()),
        value,
        evaluation,
      )
    )
  if value_fn is not None:
    return sorted(basins, key=lambda b: (np.isnan(b.value), b.value))
  return sorted(basins, key=lambda b: float(scores[b.members].mean()))
