"""Fitting with optax: one fit (`fit`) or many at once (`fit_batch`), loops over `fit_step`.

A step evaluates `loss(params, key)` and its gradient with the step's key `fold_in(key, step)`,
asks the optimiser for an update (passing `value`, `grad` and `value_fn`, so that `optax.lbfgs`
and its line search work) and applies it (`klax.fit_step`). A step whose gradient or new
parameters are not finite — or whose loss is not, on the steps that record it (every
`trace_every`-th step; every step by default) — is not applied: the fit is frozen from then on at
its last finite parameters, and the step is recorded in `diverged_at` (so one bad member of a
batch spoils nothing else).

The loss contract: `loss(params, key) -> scalar`, where `loss` is any callable pytree. Its
array leaves (data, e.g. `jax.tree_util.Partial(fn, data)` or a registered dataclass holding
arrays) are traced arguments of the compiled fit, never program constants; every other leaf
(functions, sizes, flags) and the tree's structure are static, hashed and compared with `==`.
A loss with new arrays of the same shapes and dtypes, with the same optimiser object and sizes,
reuses the compiled fit; a new closure or a new optimiser object compiles anew. `params` is any
pytree: its inexact array leaves (and Python floats) are fitted, every other leaf (an integer
array, an activation function, a string) passes through unchanged and is not differentiated.

`fit_batch` runs the same step for every member of a batch (the leading axis of
`params_batch`), as a `scan` over steps of a `vmap`ped step, with member i's key
`split(key, B)[i]`: member i of `fit_batch` is `fit` with that key (the same computation; to
float32 rounding, since programs for other batch shapes round differently). The batch is cut into
chunks of `chunk_size` members (memory stays bounded; the last chunk is padded, so every chunk
reuses one compiled program), and each chunk is sharded across `jax.devices()` along a 1-D mesh.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np

from klax import _checks
from klax import _fit_drivers
from klax import _fit_progress
from klax import _fit_stopping
from klax import _fit_tree
from klax._fit_drivers import FitResult
from klax._fit_step import checked_loss
from klax._fit_step import checked_optimizer

__all__ = ["FitResult", "fit"]


def warn_if_diverged(diverged_at) -> None:
  """Warns, outside `jit`, how many fits stopped at a non-finite value."""
  if _checks.is_concrete(diverged_at):
    count = int(np.sum(np.asarray(diverged_at) >= 0))
    if count:
      warnings.warn(
        f"{count} fit(s) stopped at a non-finite loss or gradient and kept their last finite "
        "parameters; see `FitResult.diverged_at`.",
        RuntimeWarning,
        stacklevel=3,
      )


def fit(
  loss,
  params,
  optimizer,
  key: jax.Array,
  num_steps: int,
  *,
  trace_every: int = 1,
  progress: bool = False,
  gradient_variance_draws: int = 0,
  tolerance: float | None = None,
  gradient_tolerance: float | None = None,
) -> FitResult:
  """Minimises `loss(params, key)` with an optax optimiser for `num_steps` steps.

  θₜ₊₁ = θₜ + update(∇_θ loss(θₜ, kₜ)),  kₜ = fold_in(key, t),

  as one `lax.scan` of `klax.fit_step` (`fit_init`, then a step with key fold_in(key, t) for
  t = 0, …, num_steps − 1), compiled once per (loss structure, optimizer, num_steps, trace_every). Works with
  any optax `GradientTransformation`, including `optax.lbfgs` (its line search receives the loss
  value and `value_fn = loss(·, k_t)`). Jit-compatible: it can be called inside `jax.jit`.

  Args:
    loss: `loss(params, key) -> scalar`, e.g. from `klax.reverse_kl_loss`; a callable pytree
      whose array leaves are traced (see the module's loss contract).
    params: the starting parameters (a pytree; non-array leaves pass through).
    optimizer: an optax `GradientTransformation`.
    key: a `jax.random` key; step t uses `fold_in(key, t)`.
    num_steps: the number of optimiser steps.
    trace_every: record the loss every this many steps (must divide `num_steps`).
    progress: show progress (a tqdm bar if tqdm is installed, else a line on stderr), moved by
      host callbacks about 100 times, also inside `jax.jit`; each such call has its own
      display and so compiles its own program.
    gradient_variance_draws: if D > 0 (D ≥ 2), also record the total gradient variance
      tr Cov_k[∇_θ loss(θ_t, k)] from D independent draws on every recording step, for
      comparing gradient estimators along a fit (costs D gradients per recording step).
    tolerance: stop early, as scipy's L-BFGS-B does (its `ftol`), at the first step t with
      |fₜ₋₁ − fₜ| ≤ tolerance · max(|fₜ₋₁|, |fₜ|, 1), fₜ = loss(θₜ, kₜ), keeping θₜ. For
      deterministic losses (a stochastic loss changes from step to step by its noise). The fit
      then runs as a `while_loop` and costs only the steps it takes; a line search's stored
      loss and gradient are reused (`fit_step`'s `reuse_line_search`).
    gradient_tolerance: stop early at the first step whose gradient has
      maxᵢ |∂ᵢ loss(θₜ, kₜ)| ≤ gradient_tolerance (scipy's `gtol`), keeping θₜ; with `tolerance`,
      the fit stops at whichever is met first.

  Returns:
    `FitResult(params, losses, diverged_at, gradient_variances, converged_at)`. A fit whose
      loss goes non-finite stops there, keeps its last finite parameters, and (outside `jit`)
      warns.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> loss = lambda params, key: jnp.sum((params - 3.0) ** 2)  # Deterministic: key unused.
    >>> result = klax.fit(loss, jnp.zeros(2), optax.lbfgs(), jax.random.key(0), 10)
    >>> result.params.round(4).tolist(), int(result.diverged_at)
    ([3.0, 3.0], -1)
    >>> result = klax.fit(loss, jnp.zeros(2), optax.lbfgs(), jax.random.key(0), 100,
    ...                   gradient_tolerance=1e-5)
    >>> result.params.round(4).tolist(), int(result.converged_at)  # Stopped at step 2.
    ([3.0, 3.0], 2)
  """
  num_steps, trace_every = _fit_stopping.schedule(num_steps, trace_every)
  loss, optimizer = checked_loss(loss), checked_optimizer(optimizer)
  draws = _fit_stopping.variance_draws(gradient_variance_draws)
  rule = _fit_stopping.stopping_rule(tolerance, gradient_tolerance)
  progress = _fit_progress.start(progress, num_steps, "fit")
  loss_traced, loss_static = _fit_tree.split(loss, "loss")
  params_traced, params_static = _fit_tree.split(params, "params", _fit_tree.is_param_array)
  eager = _checks.is_concrete(*jax.tree.leaves(params_traced), key)
  try:
    result = _fit_drivers.fit_jit(
      loss_traced, loss_static, params_traced, params_static, optimizer, key, rule, num_steps,
      trace_every, draws, progress,
    )  # fmt: skip
    if progress is not None and eager:
      jax.block_until_ready(result)  # Callbacks are asynchronous: let them finish first.
  finally:
    if progress is not None and eager:  # Under `jit` the display closes at its last report.
      progress.close()
  warn_if_diverged(result.diverged_at)
  return result._replace(params=_fit_tree.merge(result.params, params_static))
