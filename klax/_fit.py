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
`split(key, B)[i]`: member i of `fit_batch` is exactly `fit` with that key. The batch is cut into
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
    params: the final parameters; for a fit that diverged, the last parameters whose loss and
      gradient were finite (the starting ones if the first step already failed).
    losses: the loss every `trace_every` steps, shape [num_steps // trace_every]; NaN from the
      step where the fit diverged on.
    diverged_at: the first step whose loss, gradient or update was not finite, or −1.
    gradient_variances: with `gradient_variance_draws` = D > 0, the total variance of the
      stochastic gradient, tr Cov_k[∇_θ loss(θ_t, k)] over D fresh keys, at the parameters of
      every recording step (aligned with `losses`; see `klax.gradient_variance`); else None.
  """

  params: Any
  losses: jax.Array
  diverged_at: jax.Array
  gradient_variances: Any = None

  @property
  def diverged(self) -> jax.Array:
    """Whether the loss (or its gradient) became non-finite during the fit."""
    return self.diverged_at >= 0


class _State(NamedTuple):
  params: Any
  previous_params: Any  # The parameters one step back: their loss was finite.
  opt_state: Any
  diverged_at: jax.Array


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def _select(condition, new, old):
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _step(loss, optimizer, variance_draws, record, state: _State, key, step_index):
  """One optimiser step for one fit; frozen once the fit has diverged.

  Returns the new state and the record `(loss value, gradient variance or None)`. With `record`
  False the record is (None, None) and the loss is left out of the finiteness test, so that XLA
  drops its computation when the optimiser does not use it (Adam, SGD: it costs about a quarter
  of a step); gradients and parameters are still checked every step.
  """
  step_key = jax.random.fold_in(key, step_index)
  value, grads = jax.value_and_grad(loss)(state.params, step_key)
  updates, opt_state = optimizer.update(
    grads,
    state.opt_state,
    state.params,
    value=value,
    grad=grads,
    value_fn=lambda p: loss(p, step_key),
  )
  params = optax.apply_updates(state.params, updates)
  finite = _all_finite(grads) & _all_finite(params)
  if record:
    finite &= jnp.isfinite(value)
  running = state.diverged_at < 0
  apply = finite & running
  diverges_now = running & ~finite
  # On divergence, step back to the last parameters whose loss was finite (the start at step 0).
  kept = _select(diverges_now, state.previous_params, state.params)
  new_state = _State(
    params=_select(apply, params, kept),
    previous_params=_select(apply, state.params, state.previous_params),
    opt_state=_select(apply, opt_state, state.opt_state),
    diverged_at=jnp.where(diverges_now, step_index, state.diverged_at).astype(jnp.int32),
  )
  if not record:
    return new_state, (None, None)
  variance = None
  if variance_draws:  # At the step's starting parameters, from keys independent of the step's.
    variance_key = jax.random.fold_in(step_key, 1)
    variance = gradient_variance(loss, state.params, variance_key, variance_draws)
    variance = jnp.where(running, variance, jnp.nan)
  return new_state, (jnp.where(running, value, jnp.nan), variance)  # NaN once frozen.


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
_CHUNK_STATIC = (*_STATIC, "common_random_numbers")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _fit(loss, params, optimizer, key, num_steps, trace_every, progress, variance_draws):
  step = functools.partial(_step, loss, optimizer, variance_draws)
  state, (losses, variances) = _run(
    step, _init_state(optimizer, params), key, num_steps, trace_every, progress
  )
  return FitResult(state.params, losses, state.diverged_at, variances)


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
  common_random_numbers,
):
  key_axis = None if common_random_numbers else 0  # One key for all: its draws are shared.

  def batched_step(record, state, keys, step_index):
    one = functools.partial(_step, loss, optimizer, variance_draws, record)
    return jax.vmap(one, in_axes=(0, key_axis, None))(state, keys, step_index)

  state = jax.vmap(functools.partial(_init_state, optimizer))(params_batch)
  state, records = _run(batched_step, state, member_keys, num_steps, trace_every, progress)
  losses, variances = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  return FitResult(state.params, losses, state.diverged_at, variances)


def _variance_draws(draws) -> int:
  """`gradient_variance_draws`, checked: 0 (off) or an integer of at least 2."""
  if not isinstance(draws, bool) and isinstance(draws, int | np.integer) and draws == 0:
    return 0
  draws = _checks.positive_int(draws, "gradient_variance_draws")
  if draws < 2:
    raise ValueError(f"`gradient_variance_draws` must be 0 (off) or at least 2, got {draws}.")
  return draws


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

  Returns:
    `FitResult(params, losses, diverged_at, gradient_variances)`. A fit whose loss goes
      non-finite stops there, keeps its last finite parameters, and (outside `jit`) warns.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> loss = lambda params, key: jnp.sum((params - 3.0) ** 2)  # Deterministic: key unused.
    >>> result = klax.fit(loss, jnp.zeros(2), optax.lbfgs(), jax.random.key(0), 10)
    >>> result.params.round(4).tolist(), int(result.diverged_at)
    ([3.0, 3.0], -1)
  """
  num_steps, trace_every = _checked_schedule(num_steps, trace_every)
  loss, optimizer = _loss(loss), _optimizer(optimizer)
  bar = _start_progress(progress, num_steps, "fit")
  try:
    draws = _variance_draws(gradient_variance_draws)
    result = _fit(loss, params, optimizer, key, num_steps, trace_every, bool(progress), draws)
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
  return sizes.pop()


def _slice_and_pad(tree, start: int, stop: int, size: int):
  """Members start..stop of every leaf, padded to `size` members."""
  return _pad(jax.tree.map(lambda x: x[start:stop], tree), size)


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
) -> FitResult:
  """Many independent fits at once, over the leading axis of `params_batch`.

  θᵢ,ₜ₊₁ = θᵢ,ₜ + update(∇_θ loss(θᵢ,ₜ, kᵢ,ₜ)),  kᵢ,ₜ = fold_in(split(key, B)[i], t)
  (kᵢ,ₜ = fold_in(key, t) for every i with `common_random_numbers`).

  Member i minimises `loss(params_i, key)` exactly as `fit(loss, params_batch[i], optimizer,
  split(key, B)[i], num_steps)` would, but all members advance together: a `scan` over steps of
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

  Returns:
    `FitResult` with a leading batch axis on every field. Members whose loss went non-finite
      are frozen at their last finite parameters (`diverged_at` >= 0) and a warning says how
      many.

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
  devices = jax.devices()
  chunk = min(size, _checks.positive_int(chunk_size, "chunk_size") if chunk_size else 1 << 16)
  chunk = -(-chunk // len(devices)) * len(devices)
  sharding = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
  if not isinstance(common_random_numbers, bool):
    raise TypeError(
      f"`common_random_numbers` must be a bool, got {type(common_random_numbers).__name__}."
    )
  member_keys = key if common_random_numbers else jax.random.split(key, size)
  num_chunks = -(-size // chunk)
  bar = _start_progress(progress, num_chunks * num_steps, "fit_batch")
  results = []
  try:
    for start in range(0, size, chunk):
      stop = min(start + chunk, size)
      whole = start == 0 and stop == size == chunk  # One exact chunk: no slicing or padding.
      chunk_params = params_batch if whole else _slice_and_pad(params_batch, start, stop, chunk)
      if common_random_numbers or whole:
        chunk_keys = member_keys
      else:
        chunk_keys = _slice_and_pad(member_keys, start, stop, chunk)
      if len(devices) > 1:
        chunk_params = jax.device_put(chunk_params, sharding)
        if not common_random_numbers:  # A shared key stays replicated.
          chunk_keys = jax.device_put(chunk_keys, sharding)
      result = _fit_chunk(
        loss,
        chunk_params,
        optimizer,
        chunk_keys,
        num_steps,
        trace_every,
        bool(progress),
        draws,
        common_random_numbers,
      )
      results.append(result if whole else jax.tree.map(lambda x, n=stop - start: x[:n], result))
      if bar is not None:  # Callbacks are asynchronous: let this chunk's finish first.
        jax.block_until_ready(result)
        _PROGRESS["offset"] = (start // chunk + 1) * num_steps
  finally:
    _stop_progress(bar)
  combined = (
    results[0] if len(results) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
  )
  _warn_if_diverged(combined.diverged_at)
  return combined
