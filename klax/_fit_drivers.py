"""Loops over the guarded step: a `scan` for a fixed number of steps, a `while_loop` with a rule.

Both are written for one fit; `fit_batch` runs the scan over a `vmap` of the step and the while
loop as a `vmap` of whole fits. Step t uses the key fold_in(key, t). `result` builds every
`FitResult`.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from klax import _fit_step
from klax import _fit_tree
from klax._fit_step import FitState
from klax._gradients import gradient_variance


class FitResult(NamedTuple):
  """The outcome of a fit (for `fit_batch`, every field has a leading batch axis).

  Attributes:
    params: the final parameters; for a fit that diverged, the parameters of the last step at
      which the loss was evaluated and checked finite, with a finite gradient and update (with
      `trace_every` = 1, the step before the one that failed; with `trace_every` = k > 1 the loss
      is checked on every k-th step only, so the fit steps back to the last of those). The
      starting parameters if no checked step succeeded. Non-array leaves pass through.
    losses: the loss every `trace_every` steps, shape [num_steps // trace_every]; NaN from the
      step where the fit diverged on.
    diverged_at: the first step at which a non-finite gradient or update, or a non-finite loss
      on a step that records it (every step for stopping-rule fits), was seen; −1 if none.
    gradient_variances: with `gradient_variance_draws` = D > 0, the total variance of the
      stochastic gradient, tr Cov_k[∇_θ loss(θ_t, k)] over D fresh keys, at the parameters of
      every recording step (aligned with `losses`; see `klax.gradient_variance`); else None.
    converged_at: with a stopping rule (`tolerance` or `gradient_tolerance`), the step t at
      which the fit met it and stopped, keeping θₜ (its recorded losses and gradient variances
      from there on are those at θₜ); −1 if it ran all `num_steps` steps (always −1 without a rule).
  """

  params: Any
  losses: jax.Array
  diverged_at: jax.Array
  gradient_variances: Any = None
  converged_at: Any = None

  @property
  def diverged(self) -> jax.Array:
    """Whether the loss (or its gradient) became non-finite during the fit."""
    return self.diverged_at >= 0

  @property
  def converged(self) -> jax.Array:
    """Whether the fit met its stopping rule before `num_steps` (False without a rule)."""
    return self.converged_at >= 0


def result(state: FitState, losses, variances, converged_at=None) -> FitResult:
  """The one place a `FitResult` is built: a diverged fit returns its fallback parameters."""
  if converged_at is None:
    converged_at = jnp.full_like(state.diverged_at, -1)
  return FitResult(state.fitted_params, losses, state.diverged_at, variances, converged_at)


def _variance(loss, params, step_key, draws: int):
  """The gradient variance tr Cov[∇ loss(θₜ, ·)] at the step's parameters, from keys independent of the step's."""
  differentiable, rest = _fit_tree.partition(params)
  variance_loss = lambda p, k: loss(_fit_tree.combine(p, rest), k)  # noqa: E731
  return gradient_variance(variance_loss, differentiable, jax.random.fold_in(step_key, 1), draws)


def member_step(loss, optimizer, draws: int, check: bool, state: FitState, key, index):
  """Step `index` of one fit with key fold_in(key, index); the record (loss, variance) if `check`.

  With `check` False the record is (None, None) and the loss is left out of the finiteness test,
  so that XLA drops its computation when the optimiser does not use it (Adam, SGD: about a
  quarter of a step); gradients and parameters are still checked every step.
  """
  step_key = jax.random.fold_in(key, index)
  new, info = _fit_step.step(loss, optimizer, state, step_key, check_loss=check)
  if not check:
    return new, (None, None)
  variance = None
  if draws:
    variance = _variance(loss, state.params, step_key, draws)
    variance = jnp.where(state.diverged_at < 0, variance, jnp.nan)
  return new, (info.loss, variance)


def scan(step_fn, state, num_steps: int, trace_every: int, progress):
  """Scans `step_fn(check, state, index)` over the steps, recording every `trace_every`-th.

  Each block of `trace_every` steps runs `trace_every − 1` steps that do not check the loss and
  one that does (and records it). With a `progress` object, about 100 blocks report to it.
  """
  blocks = num_steps // trace_every
  report_every = max(1, blocks // 100)
  state, static = _fit_tree.split(state, "state", _fit_tree.is_param_array)  # The carry: arrays.
  inner = step_fn

  def step_fn(check, traced, index):
    state, record = inner(check, _fit_tree.merge(traced, static), index)
    return _fit_tree.split(state, "state", _fit_tree.is_param_array)[0], record

  def block(state, block_index):
    first = block_index * trace_every
    if trace_every > 1:
      quiet = first + jnp.arange(trace_every - 1)
      state, _ = jax.lax.scan(lambda s, i: step_fn(False, s, i), state, quiet)
    state, record = step_fn(True, state, first + trace_every - 1)
    if progress is not None:
      jax.lax.cond(
        ((block_index + 1) % report_every == 0) | (block_index + 1 == blocks),
        lambda: jax.debug.callback(progress.report, first + trace_every, record[0]),
        lambda: None,
      )
    return state, record

  state, records = jax.lax.scan(block, state, jnp.arange(blocks))
  return _fit_tree.merge(state, static), records


class _Until(NamedTuple):
  state: FitState
  value: jax.Array  # fₜ₋₁ (NaN before the first step).
  variance: Any  # The last gradient variance computed (None without draws).
  converged_at: jax.Array
  losses: jax.Array
  variances: Any


def until(loss, optimizer, rule, num_steps, trace_every, draws, progress, params, key):
  """One fit as a `while_loop` that ends at `num_steps`, at divergence, or when `rule` is met.

  Step t evaluates fₜ and ∇fₜ (from the line search's state where it stored them, exact for the
  deterministic losses a rule is for). If the rule is met the fit stops and keeps θₜ; if fₜ, ∇fₜ
  or θₜ₊₁ is not finite it stops and returns θₜ₋₁; otherwise it takes the step.
  """
  slots = num_steps // trace_every
  report_every = max(1, num_steps // 100)

  def body(traced) -> list:
    carry = _fit_tree.merge(traced, static)
    before = carry.state
    step_key = jax.random.fold_in(key, before.step)
    new, info = _fit_step.step(loss, optimizer, before, step_key, reuse_line_search=True)
    met = rule.met(carry.value, info.loss, info.grads)
    state = new._replace(
      params=_fit_step.select(met, before.params, new.params),
      diverged_at=jnp.where(met, before.diverged_at, new.diverged_at),
    )
    records = ((before.step + 1) % trace_every == 0) & ~met
    slot = before.step // trace_every
    variance, variances = carry.variance, carry.variances
    if draws:
      variance = jax.lax.cond(
        records | met,
        lambda: _variance(loss, before.params, step_key, draws).astype(variance.dtype),
        lambda: variance,
      )
      variances = variances.at[slot].set(jnp.where(records, variance, variances[slot]))
    if progress is not None:
      jax.lax.cond(
        (state.step % report_every == 0) | met | (new.diverged_at >= 0),
        lambda: jax.debug.callback(progress.report, state.step, info.loss),
        lambda: None,
      )
    return _fit_tree.split(
      _Until(
        state=state,
        value=info.loss,
        variance=variance,
        converged_at=jnp.where(met, before.step, carry.converged_at).astype(jnp.int32),
        losses=carry.losses.at[slot].set(jnp.where(records, info.loss, carry.losses[slot])),
        variances=variances,
      ),
      "state",
      _fit_tree.is_param_array,
    )[0]

  def running(traced) -> jax.Array:
    carry = _fit_tree.merge(traced, static)
    state = carry.state
    return (state.step < num_steps) & (carry.converged_at < 0) & (state.diverged_at < 0)

  dtype = jax.eval_shape(loss, params, key).dtype  # The loop carries the loss in its own dtype.
  variance = jnp.array(jnp.nan, jnp.float32) if draws else None
  if draws:
    variance_dtype = jax.eval_shape(functools.partial(_variance, loss, params, key, draws)).dtype
    variance = jnp.array(jnp.nan, variance_dtype)
  start = _Until(
    state=_fit_step.init(params, optimizer),
    value=jnp.array(jnp.nan, dtype),
    variance=variance,
    converged_at=jnp.array(-1, jnp.int32),
    losses=jnp.full(slots, jnp.nan, dtype),
    variances=None if variance is None else jnp.full(slots, jnp.nan, variance.dtype),
  )
  start, static = _fit_tree.split(start, "state", _fit_tree.is_param_array)  # The carry: arrays.
  end = _fit_tree.merge(jax.lax.while_loop(running, body, start), static)
  # From the step where the fit stopped on, every recording step would have recorded f(θₜ).
  held = (end.converged_at >= 0) & (jnp.arange(slots) >= end.converged_at // trace_every)
  losses = jnp.where(held, end.value, end.losses)
  variances = None if variance is None else jnp.where(held, end.variance, end.variances)
  return result(end.state, losses, variances, end.converged_at)


def single(loss, optimizer, rule, num_steps, trace_every, draws, progress, params, key):
  """One fit: the while loop with a rule, else the scan."""
  if rule is not None:
    return until(loss, optimizer, rule, num_steps, trace_every, draws, progress, params, key)
  step_fn = lambda check, s, i: member_step(loss, optimizer, draws, check, s, key, i)  # noqa: E731
  state = _fit_step.init(params, optimizer)
  state, (losses, variances) = scan(step_fn, state, num_steps, trace_every, progress)
  return result(state, losses, variances)


_STATIC = (
  "loss_static", "params_static", "optimizer", "rule", "num_steps", "trace_every", "draws",
  "progress",
)  # fmt: skip


@functools.partial(jax.jit, static_argnames=_STATIC)
def fit_jit(loss_traced, loss_static, params_traced, params_static, optimizer, key, rule, num_steps, trace_every, draws, progress):  # fmt: skip
  """`single`, compiled once per static configuration: the loss's arrays are traced arguments."""
  loss = _fit_tree.merge(loss_traced, loss_static)
  params = _fit_tree.merge(params_traced, params_static)
  fitted = single(loss, optimizer, rule, num_steps, trace_every, draws, progress, params, key)
  return fitted._replace(
    params=_fit_tree.split(fitted.params, "params", _fit_tree.is_param_array)[0]
  )
