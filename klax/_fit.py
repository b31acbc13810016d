"""Fitting with optax: one fit (`fit`) or many at once (`fit_batch`), `lax.scan` inside.

A step evaluates `loss(params, key)` and its gradient with the step's key
`fold_in(key, step)`, asks the optimiser for an update (passing `value`, `grad` and `value_fn`,
so that `optax.lbfgs` and its line search work) and applies it. A step whose gradient or new
parameters are not finite — or whose loss is not, on the steps that record it (every
`trace_every`-th step; every step by default) — is not applied: the fit is frozen from then on at its last finite
parameters, and the step is recorded in `diverged_at` (so one bad member of a batch spoils
nothing else).

`fit_batch` runs the same step for every member of a batch (the leading axis of
`params_batch`), as a `scan` over steps of a `vmap`ped step, with member i's key
`split(key, B)[i]`: member i of `fit_batch` is `fit` with that key (the same computation; to
float32 rounding, since programs for other batch shapes round differently). The batch is cut into
chunks of `chunk_size` members (memory stays bounded; the last chunk is padded, so every chunk
reuses one compiled program), and each chunk is sharded across `jax.devices()` along a 1-D mesh.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from klax import _checks
from klax._gradients import gradient_variance


class FitResult(NamedTuple):
  """The outcome of a fit (for `fit_batch`, every field has a leading batch axis).

  Attributes:
    params: the final parameters; for a fit that diverged, the parameters of the last step at
      which the loss was evaluated and checked finite, with a finite gradient and update (with
      `trace_every` = 1, the step before the one that failed; with `trace_every` = k > 1 the loss
      is checked on every k-th step only, so the fit steps back to the last of those). The
      starting parameters if no checked step succeeded.
    losses: the loss every `trace_every` steps, shape [num_steps // trace_every]; NaN from the
      step where the fit diverged on.
    diverged_at: the first step at which a non-finite gradient or update, or a non-finite loss
      on a step that records it (every step for stopping-rule fits), was seen; −1 if none.
    gradient_variances: with `gradient_variance_draws` = D > 0, the total variance of the
      stochastic gradient, tr Cov_k[∇_θ loss(θ_t, k)] over D fresh keys, at the parameters of
      every recording step (aligned with `losses`; see `klax.gradient_variance`); else None.
    converged_at: with a stopping rule (`tolerance` or `gradient_tolerance`), the step t at
      which the fit met it and stopped, keeping θₜ (its recorded losses from there on are
      loss(θₜ)); −1 if it ran all `num_steps` steps (always −1 without a rule).
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


class _State(NamedTuple):
  params: Any  # θₜ; frozen at the step where the fit diverged.
  previous_params: Any  # θ_r: those of the last recording step, whose loss was finite.
  opt_state: Any
  diverged_at: jax.Array


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def _select(condition, new, old):
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _apply_optimizer(loss, optimizer, params, opt_state, step_key, value, grads):
  """θₜ₊₁ and the optimiser's new state; a line search gets fₜ, ∇fₜ and loss(·, kₜ) itself."""
  updates, opt_state = optimizer.update(
    grads, opt_state, params, value=value, grad=grads, value_fn=lambda p: loss(p, step_key)
  )
  return optax.apply_updates(params, updates), opt_state


def _step(loss, optimizer, variance_draws, record, state: _State, key, step_index):
  """One optimiser step for one fit; frozen once the fit has diverged.

  Returns the new state and the record `(loss value, gradient variance or None)`. With `record`
  False the record is (None, None) and the loss is left out of the finiteness test, so that XLA
  drops its computation when the optimiser does not use it (Adam, SGD: it costs about a quarter
  of a step); gradients and parameters are still checked every step. The fallback θ_r is the
  parameters of the last recording step r whose loss, gradient and update were finite (θₜ₋₁ when
  every step records): a fit that diverges at step t keeps θₜ and θ_r from then on, and
  `_final_params` returns θ_r. (Stepping back inside the step instead, a three-way select per
  parameter, made XLA's CPU loop slower.)
  """
  step_key = jax.random.fold_in(key, step_index)
  value, grads = jax.value_and_grad(loss)(state.params, step_key)
  params, opt_state = _apply_optimizer(
    loss, optimizer, state.params, state.opt_state, step_key, value, grads
  )
  finite = _all_finite(grads) & _all_finite(params)
  if record:
    finite &= jnp.isfinite(value)
  running = state.diverged_at < 0
  apply = finite & running
  new_state = _State(
    params=_select(apply, params, state.params),
    # θₜ's loss is known to be finite only on a recording step: only those move the fallback.
    previous_params=(
      _select(apply, state.params, state.previous_params) if record else state.previous_params
    ),
    opt_state=_select(apply, opt_state, state.opt_state),
    diverged_at=jnp.where(running & ~finite, step_index, state.diverged_at).astype(jnp.int32),
  )
  if not record:
    return new_state, (None, None)
  variance = None
  if variance_draws:  # At the step's starting parameters, from keys independent of the step's.
    variance_key = jax.random.fold_in(step_key, 1)
    variance = gradient_variance(loss, state.params, variance_key, variance_draws)
    variance = jnp.where(running, variance, jnp.nan)
  return new_state, (jnp.where(running, value, jnp.nan), variance)  # NaN once frozen.


def _final_params(state: _State):
  """The fit's parameters: θ at the end, or, if it diverged, the last ones with a finite loss."""
  return _select(state.diverged_at >= 0, state.previous_params, state.params)


_PROGRESS: dict[str, Any] = {"bar": None, "offset": 0}


def _report_progress(steps_done, losses) -> None:
  bar = _PROGRESS["bar"]
  if bar is not None:
    bar.update(max(0, _PROGRESS["offset"] + int(steps_done) - bar.n))
    bar.set_postfix(loss=f"{float(np.nanmean(np.asarray(losses))):.4g}")


def _run(step, state, keys, num_steps: int, trace_every: int, progress: bool):
  """Scans `step(record, state, keys, i)` over steps, keeping the loss every `trace_every` steps.

  Each block of `trace_every` steps runs `trace_every − 1` steps that do not record the loss and
  one that does (and checks it for finiteness).
  """
  report_every = max(1, (num_steps // trace_every) // 100)

  def block(state, block_index):
    first = block_index * trace_every
    if trace_every > 1:
      quiet = first + jnp.arange(trace_every - 1)
      state, _ = jax.lax.scan(lambda s, i: step(False, s, keys, i), state, quiet)
    state, record = step(True, state, keys, first + trace_every - 1)
    if progress:
      jax.lax.cond(
        (block_index + 1) % report_every == 0,
        lambda: jax.debug.callback(_report_progress, first + trace_every, record[0]),
        lambda: None,
      )
    return state, record

  return jax.lax.scan(block, state, jnp.arange(num_steps // trace_every))


def _init_state(optimizer, params) -> _State:
  return _State(params, params, optimizer.init(params), jnp.array(-1, jnp.int32))


_STATIC = ("loss", "optimizer", "num_steps", "trace_every", "progress", "variance_draws")
_CHUNK_STATIC = (*_STATIC, "key_mode")

# How a chunk's `keys` argument gives its members their keys: "members", one key per member;
# "split", one key that the chunk splits into `split(key, chunk)` itself (the whole batch in one
# chunk: no separately compiled split before the first call); "common", one key for every member.


def _member_keys(keys, key_mode: str, size: int):
  """The chunk's keys: per member (split here for "split"), or the one shared key."""
  return jax.random.split(keys, size) if key_mode == "split" else keys


@functools.partial(jax.jit, static_argnames=_STATIC)
def _fit(loss, params, optimizer, key, num_steps, trace_every, progress, variance_draws):
  step = functools.partial(_step, loss, optimizer, variance_draws)
  state, (losses, variances) = _run(
    step, _init_state(optimizer, params), key, num_steps, trace_every, progress
  )
  params = _final_params(state)
  return FitResult(params, losses, state.diverged_at, variances, _never(state.diverged_at))


def _never(diverged_at) -> jax.Array:
  """`converged_at` of fits without a stopping rule: −1 for every member."""
  return jnp.full_like(diverged_at, -1)


@functools.partial(jax.jit, static_argnames=_CHUNK_STATIC)
def _fit_chunk(
  loss,
  params_batch,
  optimizer,
  member_keys,
  num_steps,
  trace_every,
  progress,
  variance_draws,
  key_mode,
):
  member_keys = _member_keys(member_keys, key_mode, jax.tree.leaves(params_batch)[0].shape[0])
  key_axis = None if key_mode == "common" else 0  # One key for all: its draws are shared.

  def batched_step(record, state, keys, step_index):
    one = functools.partial(_step, loss, optimizer, variance_draws, record)
    return jax.vmap(one, in_axes=(0, key_axis, None))(state, keys, step_index)

  state = jax.vmap(functools.partial(_init_state, optimizer))(params_batch)
  state, records = _run(batched_step, state, member_keys, num_steps, trace_every, progress)
  losses, variances = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  params = jax.vmap(_final_params)(state)
  return FitResult(params, losses, state.diverged_at, variances, _never(state.diverged_at))


class _StoppingRule(NamedTuple):
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
    return met & jnp.isfinite(value) & _all_finite(grads)


class _UntilState(NamedTuple):
  params: Any
  previous_params: Any  # θₜ₋₁, whose loss and gradient were finite.
  opt_state: Any
  step: jax.Array  # The next step's index.
  value: jax.Array  # The loss at the last evaluated parameters (NaN before the first step).
  converged_at: jax.Array
  diverged_at: jax.Array
  losses: jax.Array


def _value_and_grad(loss, params, step_key, opt_state):
  """loss(θₜ, kₜ) and its gradient, taken from `opt_state` where the optimiser stored them.

  A line search (`optax.lbfgs`'s zoom) evaluates the loss and gradient at the point it accepts
  and keeps them in its state (`value`, `grad`); for a deterministic loss they are exactly the
  next step's, so the step does not evaluate them again (optax's `value_and_grad_from_state`).
  """
  stored = [optax.tree_utils.tree_get(opt_state, name) for name in ("value", "grad")]
  if any(x is None for x in stored):
    return jax.value_and_grad(loss)(params, step_key)
  return optax.value_and_grad_from_state(lambda p: loss(p, step_key))(params, state=opt_state)


def _fit_until(loss, optimizer, rule, num_steps, trace_every, params, key) -> FitResult:
  """One fit as a `while_loop` that ends at `num_steps`, at divergence, or when `rule` is met.

  Step t evaluates fₜ = loss(θₜ, kₜ) and ∇fₜ (or takes them from the line search's state, see
  `_value_and_grad`). If the rule is met it stops there and keeps θₜ; if fₜ, ∇fₜ or θₜ₊₁ is not
  finite it stops at the last parameters whose loss and gradient were finite (θₜ₋₁), as `_step`
  with `_final_params` does; otherwise it takes the optimiser's step. Either way the loop ends,
  so only the parameters are selected: the optimiser's state of a stopped fit is never used again
  (one `select` per parameter instead of three per leaf of the optimiser's state: a tenth less
  to compile).
  """

  def body(carry: _UntilState) -> _UntilState:
    step_key = jax.random.fold_in(key, carry.step)
    value, grads = _value_and_grad(loss, carry.params, step_key, carry.opt_state)
    met = rule.met(carry.value, value, grads)
    params, opt_state = _apply_optimizer(
      loss, optimizer, carry.params, carry.opt_state, step_key, value, grads
    )
    diverges = ~met & ~(_all_finite(grads) & _all_finite(params) & jnp.isfinite(value))
    kept = _select(diverges, carry.previous_params, carry.params)
    records = ((carry.step + 1) % trace_every == 0) & ~met
    slot = carry.step // trace_every
    return _UntilState(
      params=_select(met | diverges, kept, params),
      previous_params=carry.params,
      opt_state=opt_state,
      step=carry.step + 1,
      value=value,
      converged_at=jnp.where(met, carry.step, carry.converged_at).astype(jnp.int32),
      diverged_at=jnp.where(diverges, carry.step, carry.diverged_at).astype(jnp.int32),
      losses=carry.losses.at[slot].set(jnp.where(records, value, carry.losses[slot])),
    )

  def running(carry: _UntilState) -> jax.Array:
    return (carry.step < num_steps) & (carry.converged_at < 0) & (carry.diverged_at < 0)

  dtype = jax.eval_shape(loss, params, key).dtype  # The loop carries the loss in its own dtype.
  start = _UntilState(
    params=params,
    previous_params=params,
    opt_state=optimizer.init(params),
    step=jnp.array(0, jnp.int32),
    value=jnp.array(jnp.nan, dtype),
    converged_at=jnp.array(-1, jnp.int32),
    diverged_at=jnp.array(-1, jnp.int32),
    losses=jnp.full(num_steps // trace_every, jnp.nan, dtype),
  )
  end = jax.lax.while_loop(running, body, start)
  # From the step where the fit stopped on, every recording step would have recorded f(θₜ).
  after = jnp.arange(num_steps // trace_every) >= end.converged_at // trace_every
  losses = jnp.where((end.converged_at >= 0) & after, end.value, end.losses)
  return FitResult(end.params, losses, end.diverged_at, None, end.converged_at)


_UNTIL_STATIC = ("loss", "optimizer", "rule", "num_steps", "trace_every")


@functools.partial(jax.jit, static_argnames=_UNTIL_STATIC)
def _fit_until_jit(loss, params, optimizer, key, rule, num_steps, trace_every):
  return _fit_until(loss, optimizer, rule, num_steps, trace_every, params, key)


@functools.partial(jax.jit, static_argnames=(*_UNTIL_STATIC, "key_mode", "group_size"))
def _fit_chunk_until(
  loss,
  params_batch,
  optimizer,
  member_keys,
  rule,
  num_steps,
  trace_every,
  key_mode,
  group_size,
):
  """Each device fits its members in groups of `group_size`, one group after another.

  A group is a `vmap` of whole fits, so it runs until its slowest member has stopped; the
  groups are a `lax.map`, so no group waits for another.
  """
  one = functools.partial(_fit_until, loss, optimizer, rule, num_steps, trace_every)

  batch_size = None if group_size == 1 else group_size  # One member per group: no vmap at all.

  def local(params, keys):
    if key_mode == "common":
      return jax.lax.map(lambda p: one(p, keys), params, batch_size=batch_size)
    return jax.lax.map(lambda pk: one(*pk), (params, keys), batch_size=batch_size)

  mesh = Mesh(np.array(jax.devices()), ("batch",))
  key_spec = PartitionSpec() if key_mode == "common" else PartitionSpec("batch")
  # check_vma=False: optax's line searches mix per-device and replicated values in their conds.
  sharded = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(PartitionSpec("batch"), key_spec),
    out_specs=PartitionSpec("batch"),
    check_vma=False,
  )
  member_keys = _member_keys(member_keys, key_mode, jax.tree.leaves(params_batch)[0].shape[0])
  return sharded(params_batch, member_keys)


def _variance_draws(draws) -> int:
  """`gradient_variance_draws`, checked: 0 (off) or an integer of at least 2."""
  if not isinstance(draws, bool) and isinstance(draws, int | np.integer) and draws == 0:
    return 0
  draws = _checks.positive_int(draws, "gradient_variance_draws")
  if draws < 2:
    raise ValueError(f"`gradient_variance_draws` must be 0 (off) or at least 2, got {draws}.")
  return draws


def _tolerance(value, name: str) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
    raise TypeError(f"`{name}` must be a float or None, got {type(value).__name__}.")
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
  return float(value)


def _stopping_rule(tolerance, gradient_tolerance, variance_draws) -> _StoppingRule | None:
  """The stopping rule (None without one); a rule excludes gradient-variance traces."""
  rule = _StoppingRule(
    _tolerance(tolerance, "tolerance"), _tolerance(gradient_tolerance, "gradient_tolerance")
  )
  if rule.tolerance is None and rule.gradient_tolerance is None:
    return None
  if variance_draws:
    raise ValueError(
      "`gradient_variance_draws` traces stochastic fits; it cannot be combined with a stopping "
      "rule (`tolerance`, `gradient_tolerance`), which is for deterministic losses."
    )
  return rule


def _checked_schedule(num_steps, trace_every) -> tuple[int, int]:
  num_steps = _checks.positive_int(num_steps, "num_steps")
  trace_every = _checks.positive_int(trace_every, "trace_every")
  if num_steps % trace_every:
    raise ValueError(f"`trace_every`={trace_every} must divide `num_steps`={num_steps}.")
  return num_steps, trace_every


def _optimizer(optimizer):
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
      f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}."
    )
  return _with_extra_args(optimizer)


@functools.lru_cache(maxsize=128)
def _with_extra_args(optimizer):
  """One wrapper per optimizer object, so that the compiled fit is found again on the next call."""
  return optax.with_extra_args_support(optimizer)


def _loss(loss):
  if not callable(loss):
    raise TypeError(f"`loss` must be a callable loss(params, key), got {type(loss).__name__}.")
  return loss


def _start_progress(progress: bool, total: int, description: str):
  if not progress:
    return None
  from tqdm.auto import tqdm

  _PROGRESS["bar"] = tqdm(total=total, desc=description, unit="step")
  _PROGRESS["offset"] = 0
  return _PROGRESS["bar"]


def _stop_progress(bar) -> None:
  if bar is not None:
    bar.update(bar.total - bar.n)
    bar.close()
    _PROGRESS["bar"] = None


def _warn_if_diverged(diverged_at) -> None:
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

  as one `lax.scan`, compiled once per (loss, optimizer, num_steps, trace_every). Works with
  any optax `GradientTransformation`, including `optax.lbfgs` (its line search receives the loss
  value and `value_fn = loss(·, k_t)`). Jit-compatible: it can be called inside `jax.jit`.

  Args:
    loss: `loss(params, key) -> scalar`, e.g. from `klax.reverse_kl_loss`.
    params: the starting parameters (a pytree).
    optimizer: an optax `GradientTransformation`.
    key: a `jax.random` key; step t uses `fold_in(key, t)`.
    num_steps: the number of optimiser steps.
    trace_every: record the loss every this many steps (must divide `num_steps`).
    progress: show a tqdm progress bar, updated by host callbacks about 100 times.
    gradient_variance_draws: if D > 0 (D ≥ 2), also record the total gradient variance
      tr Cov_k[∇_θ loss(θ_t, k)] from D independent draws on every recording step, for
      comparing gradient estimators along a fit (costs D gradients per recording step).
    tolerance: stop early, as scipy's L-BFGS-B does (its `ftol`), at the first step t with
      |fₜ₋₁ − fₜ| ≤ tolerance · max(|fₜ₋₁|, |fₜ|, 1), fₜ = loss(θₜ, kₜ), keeping θₜ. For
      deterministic losses (a stochastic loss changes from step to step by its noise). The fit
      then runs as a `while_loop` and costs only the steps it takes; `progress` moves once, at
      the end.
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
  num_steps, trace_every = _checked_schedule(num_steps, trace_every)
  loss, optimizer = _loss(loss), _optimizer(optimizer)
  draws = _variance_draws(gradient_variance_draws)
  rule = _stopping_rule(tolerance, gradient_tolerance, draws)
  bar = _start_progress(progress, num_steps, "fit")
  try:
    if rule is None:
      result = _fit(loss, params, optimizer, key, num_steps, trace_every, bool(progress), draws)
    else:
      result = _fit_until_jit(loss, params, optimizer, key, rule, num_steps, trace_every)
    if bar is not None:
      jax.block_until_ready(result)
  finally:
    _stop_progress(bar)
  _warn_if_diverged(result.diverged_at)
  return result


def _batch_size(params_batch) -> int:
  leaves = jax.tree.leaves(params_batch)
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


def _slice_and_pad(tree, start: int, stop: int, size: int):
  """Members start..stop of every leaf, padded to `size` members."""
  return _pad(jax.tree.map(lambda x: x[start:stop], tree), size)


def _group_size(group_size, rule, per_device: int, platform: str) -> int:
  """Members per vmapped group on one device (see `fit_batch`'s `group_size`)."""
  if group_size is not None:
    group_size = _checks.positive_int(group_size, "group_size")
    if rule is None:
      raise ValueError(
        "`group_size` applies to fits with a stopping rule (`tolerance` or "
        "`gradient_tolerance`); without one every member runs all `num_steps` steps together."
      )
  elif rule is not None:
    group_size = 1 if platform == "cpu" else per_device
  return per_device if group_size is None else min(group_size, per_device)


def _pad(tree, size: int):
  """Pads the leading axis of every leaf to `size` by repeating its first entry."""

  def pad(x):
    missing = size - x.shape[0]
    return x if missing == 0 else jnp.concatenate([x, jnp.repeat(x[:1], missing, axis=0)])

  return jax.tree.map(pad, tree)


def fit_batch(
  loss,
  params_batch,
  optimizer,
  key: jax.Array,
  num_steps: int,
  *,
  chunk_size: int | None = None,
  trace_every: int = 1,
  progress: bool = False,
  gradient_variance_draws: int = 0,
  common_random_numbers: bool = False,
  tolerance: float | None = None,
  gradient_tolerance: float | None = None,
  group_size: int | None = None,
) -> FitResult:
  """Many independent fits at once, over the leading axis of `params_batch`.

  θᵢ,ₜ₊₁ = θᵢ,ₜ + update(∇_θ loss(θᵢ,ₜ, kᵢ,ₜ)),  kᵢ,ₜ = fold_in(split(key, B)[i], t)
  (kᵢ,ₜ = fold_in(key, t) for every i with `common_random_numbers`).

  Member i minimises `loss(params_i, key)` as `fit(loss, params_batch[i], optimizer,
  split(key, B)[i], num_steps)` would (the same computation: equal to float32 rounding, as are
  chunked and sharded calls to the whole batch; the same call again is bit-identical), but all
  members advance together: a `scan` over steps of
  a `vmap`ped step, sharded across `jax.devices()` (a 1-D mesh over the batch axis, so the same
  call uses every GPU/TPU or host device), in chunks of `chunk_size` members so that memory stays
  bounded (1,000,000 restarts of a 1-D problem run on a 24 GiB machine). The compiled program is
  reused across chunks and across calls with the same loss, optimizer and sizes: build the loss
  and the optimizer once and pass the same objects again (a fresh `optax.adam(...)` or a new
  loss closure is a new static argument, and compiles anew).

  Args:
    loss: `loss(params, key) -> scalar` for one member.
    params_batch: a pytree whose leaves share a leading batch axis of size B.
    optimizer: an optax `GradientTransformation` (one state per member).
    key: a `jax.random` key, split into one stream per member.
    num_steps: optimiser steps per member.
    chunk_size: members per compiled call, at most B (default 65,536), rounded up to a multiple
      of the number of devices.
    trace_every: record the loss every this many steps (memory: B × num_steps / trace_every).
    progress: show a tqdm bar over chunks × steps.
    gradient_variance_draws: as in `fit`: record each member's gradient variance (D ≥ 2 draws)
      on every recording step.
    common_random_numbers: if True, every member uses the same key at each step,
      `fold_in(key, t)`, so a loss that samples (e.g. `reverse_kl_loss`) draws its base noise
      once per step for the whole batch instead of once per member. Each member's gradient is
      still unbiased and each member is still a correct stochastic fit (member i is `fit` with
      `key`); only the members are no longer independent of each other. Sampling is most of the
      cost of a multi-start reverse-KL fit, so this is much faster; use it when the members are
      restarts whose end points you compare, not replicates whose spread you measure.
    tolerance: as in `fit`: each member stops at its first step with
      |fₜ₋₁ − fₜ| ≤ tolerance · max(|fₜ₋₁|, |fₜ|, 1) (deterministic losses; e.g. `optax.lbfgs`
      on a grid). With a stopping rule the members run in groups of `group_size`: a group is a
      `vmap` of whole fits (`while_loop`s), so it runs until its slowest member stops, and the
      groups of a device run one after another (`lax.map`), so no group waits for another.
    gradient_tolerance: as in `fit`: each member stops at its first step with
      maxᵢ |∂ᵢfₜ| ≤ gradient_tolerance.
    group_size: with a stopping rule, the members advanced together on each device. Default:
      1 on CPU (one member's fit is already a vector computation there, and a group of one
      runs its line search's branches without `vmap`'s selects: 1.5× faster than a group of 4
      on seed 001's grid), and all of a device's members on GPU/TPU (there the width is free
      and waiting for the slowest member is cheap). Only for fits with a stopping rule.

  Returns:
    `FitResult` with a leading batch axis on every field. Members whose loss went non-finite
      are frozen at their last finite parameters (`diverged_at` >= 0) and a warning says how
      many; with a stopping rule, `converged_at` says where each member stopped.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> log_p = lambda x: jnp.logaddexp(-0.5 * (x + 3) ** 2, -0.5 * (x - 3) ** 2)  # Two modes.
    >>> loss = klax.reverse_kl_loss(klax.families.normal(), log_p, 32)
    >>> starts = {"loc": jnp.array([-4.0, -2.0, 2.0, 4.0]), "log_scale": jnp.zeros(4)}
    >>> result = klax.fit_batch(loss, starts, optax.adam(0.05), jax.random.key(0), 300)
    >>> jnp.sign(result.params["loc"]).tolist()  # Each start finds its nearer mode.
    [-1.0, -1.0, 1.0, 1.0]
  """
  num_steps, trace_every = _checked_schedule(num_steps, trace_every)
  loss, optimizer = _loss(loss), _optimizer(optimizer)
  size = _batch_size(params_batch)
  draws = _variance_draws(gradient_variance_draws)
  rule = _stopping_rule(tolerance, gradient_tolerance, draws)
  devices = jax.devices()
  chunk = _checks.positive_int(chunk_size, "chunk_size") if chunk_size is not None else 1 << 16
  chunk = min(size, chunk)
  per_device = -(-chunk // len(devices))
  group = _group_size(group_size, rule, per_device, devices[0].platform)
  chunk = -(-per_device // group) * group * len(devices)  # Whole groups on every device.
  sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
  if not isinstance(common_random_numbers, bool):
    raise TypeError(
      f"`common_random_numbers` must be a bool, got {type(common_random_numbers).__name__}."
    )
  num_chunks = -(-size // chunk)
  if common_random_numbers:
    key_mode = "common"
  elif num_chunks == 1 and size == chunk:
    key_mode = "split"  # The chunk splits `key` itself, inside its compiled program.
  else:
    key_mode, member_keys = "members", jax.random.split(key, size)
  bar = _start_progress(progress, num_chunks * num_steps, "fit_batch")
  results = []
  try:
    for start in range(0, size, chunk):
      stop = min(start + chunk, size)
      whole = start == 0 and stop == size == chunk  # One exact chunk: no slicing or padding.
      chunk_params = params_batch if whole else _slice_and_pad(params_batch, start, stop, chunk)
      if key_mode == "members":
        chunk_keys = _slice_and_pad(member_keys, start, stop, chunk)
      else:
        chunk_keys = key
      if len(devices) > 1:
        chunk_params = jax.device_put(chunk_params, sharding)
        if key_mode == "members":  # A single key stays replicated.
          chunk_keys = jax.device_put(chunk_keys, sharding)
      if rule is None:
        result = _fit_chunk(
          loss,
          chunk_params,
          optimizer,
          chunk_keys,
          num_steps,
          trace_every,
          bool(progress),
          draws,
          key_mode,
        )
      else:
        result = _fit_chunk_until(
          loss,
          chunk_params,
          optimizer,
          chunk_keys,
          rule,
          num_steps,
          trace_every,
          key_mode,
          group,
        )
      results.append(result if whole else jax.tree.map(lambda x, n=stop - start: x[:n], result))
      if bar is not None:  # Callbacks are asynchronous: let this chunk's finish first.
        jax.block_until_ready(result)
        _PROGRESS["offset"] = (start // chunk + 1) * num_steps
        bar.update(max(0, _PROGRESS["offset"] - bar.n))  # Fits with a rule report per chunk.
  finally:
    _stop_progress(bar)
  combined = (
    results[0] if len(results) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
  )
  _warn_if_diverged(combined.diverged_at)
  return combined
