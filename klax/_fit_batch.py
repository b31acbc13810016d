"""`fit_batch`: many fits at once, in chunks of whole groups, sharded over the devices.

One chunk is one compiled program: on each device (a `shard_map` over a 1-D mesh when there is
more than one) its members run in groups of `group_size`, one group after another (`lax.map`);
a group is a `scan` over steps of a `vmap`ped step, or, with a stopping rule, a `vmap` of whole
fits (`while_loop`s), so a group runs until its slowest member stops and no group waits for
another. A group of one runs its fit without `vmap`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from klax import _checks
from klax import _fit_drivers
from klax import _fit_progress
from klax import _fit_step
from klax import _fit_stopping
from klax import _fit_tree
from klax._fit import warn_if_diverged
from klax._fit_drivers import FitResult
from klax._fit_step import checked_loss
from klax._fit_step import checked_optimizer


def _scan_group(loss, optimizer, config, params_static, params, keys, common: bool):
  """A group of members as one scan over steps of a `vmap`ped step (progress outside the vmap)."""
  _, num_steps, trace_every, draws, progress = config
  key_axis = None if common else 0  # One key for all: its draws are shared.

  def one(check, traced, key, index):
    state = _fit_tree.merge(traced, state_static)
    state, record = _fit_drivers.member_step(loss, optimizer, draws, check, state, key, index)
    return _fit_tree.split(state, "state", _fit_tree.is_param_array)[0], record

  def batched(check, traced, index):
    return jax.vmap(functools.partial(one, check), in_axes=(0, key_axis, None))(traced, keys, index)

  def init(traced):
    state = _fit_step.init(_fit_tree.merge(traced, params_static), optimizer)
    return _fit_tree.split(state, "state", _fit_tree.is_param_array)

  state_static = init(jax.tree.map(lambda x: x[0], params))[1]
  traced = jax.vmap(lambda p: init(p)[0])(params)
  traced, records = _fit_drivers.scan(batched, traced, num_steps, trace_every, progress)
  losses, variances = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), records)
  fitted = _fit_drivers.result(_fit_tree.merge(traced, state_static), losses, variances)
  return fitted._replace(
    params=_fit_tree.split(fitted.params, "params", _fit_tree.is_param_array)[0]
  )


def _one(loss, optimizer, config, params_static, params, key):
  """One member's whole fit (without progress: a group's displays would interleave)."""
  rule, num_steps, trace_every, draws, _ = config
  params = _fit_tree.merge(params, params_static)
  fitted = _fit_drivers.single(
    loss, optimizer, rule, num_steps, trace_every, draws, None, params, key
  )
  return fitted._replace(
    params=_fit_tree.split(fitted.params, "params", _fit_tree.is_param_array)[0]
  )


def _device(loss, optimizer, config, params_static, common, group_size, params, keys):
  """A device's members, `group_size` at a time, one group after another."""
  batched = config[0] is None or group_size > 1  # A fit with a rule, one at a time: no vmap.
  if config[0] is None:
    run = functools.partial(_scan_group, loss, optimizer, config, params_static, common=common)
  else:
    one = functools.partial(_one, loss, optimizer, config, params_static)
    run = jax.vmap(one, in_axes=(0, None if common else 0)) if batched else one
  size = jax.tree.leaves(params)[0].shape[0]
  if batched and group_size == size:
    return run(params, keys)
  group_axis = [group_size] if batched else []

  def groups(x):
    return x.reshape(size // group_size, *group_axis, *x.shape[1:])

  grouped = jax.tree.map(groups, params)
  if common:
    fitted = jax.lax.map(lambda p: run(p, keys), grouped)
  else:
    fitted = jax.lax.map(lambda pk: run(*pk), (grouped, jax.tree.map(groups, keys)))
  return jax.tree.map(lambda x: x.reshape(size, *x.shape[1 + len(group_axis) :]), fitted)


_STATIC = (
  "loss_static", "params_static", "optimizer", "config", "common", "group_size", "num_devices",
)  # fmt: skip


@functools.partial(jax.jit, static_argnames=_STATIC)
def chunk_jit(loss_traced, loss_static, params, params_static, optimizer, keys, config, common, group_size, num_devices):  # fmt: skip
  """One chunk: its members' fits, sharded over the first `num_devices` devices."""

  def local(loss_traced, params, keys):
    loss = _fit_tree.merge(loss_traced, loss_static)
    return _device(loss, optimizer, config, params_static, common, group_size, params, keys)

  if num_devices == 1:
    return local(loss_traced, params, keys)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("batch",))
  batch, replicated = PartitionSpec("batch"), PartitionSpec()
  # check_vma=False: optax's line searches mix per-device and replicated values in their conds.
  sharded = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(replicated, batch, replicated if common else batch),
    out_specs=batch,
    check_vma=False,
  )
  return sharded(loss_traced, params, keys)


def group_size_of(group_size, rule, per_device: int, platform: str) -> int:
  """Members per vmapped group on one device (see `fit_batch`'s `group_size`)."""
  if group_size is not None:
    group_size = _checks.positive_int(group_size, "group_size")
  elif rule is not None:
    group_size = 1 if platform == "cpu" else per_device
  return per_device if group_size is None else min(group_size, per_device)


def slice_and_pad(tree, start: int, stop: int, size: int):
  """Members start..stop of every leaf, padded to `size` members by repeating the first."""

  def pad(x):
    x = x[start:stop]
    missing = size - x.shape[0]
    return x if missing == 0 else jnp.concatenate([x, jnp.repeat(x[:1], missing, axis=0)])

  return jax.tree.map(pad, tree)


def sharding(num_devices: int) -> NamedSharding:
  """Members split along the batch axis over the first `num_devices` devices."""
  return NamedSharding(
    Mesh(np.array(jax.devices()[:num_devices]), ("batch",)), PartitionSpec("batch")
  )


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
    loss: `loss(params, key) -> scalar` for one member, a callable pytree whose array leaves
      are traced (new data of the same shapes reuses the compiled fit).
    params_batch: a pytree whose array leaves share a leading batch axis of size B (other
      leaves are shared by every member and pass through).
    optimizer: an optax `GradientTransformation` (one state per member).
    key: a `jax.random` key, split into one stream per member.
    num_steps: optimiser steps per member.
    chunk_size: members per compiled call, at most B (default 65,536), rounded up to a multiple
      of the number of devices.
    trace_every: record the loss every this many steps (memory: B × num_steps / trace_every).
    progress: show progress over chunks × steps (tqdm if installed, else a line on stderr);
      with a stopping rule it moves once per chunk.
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
    group_size: the members advanced together (vmapped) on each device; the groups of a device
      run one after another. Default: all of a device's members without a stopping rule; with
      one, 1 on CPU (one member's fit is already a vector computation there, and a group of one
      runs its line search's branches without `vmap`'s selects: 1.5× faster than a group of 4
      on seed 001's grid) and all of a device's members on GPU/TPU (there the width is free
      and waiting for the slowest member is cheap). Smaller groups bound memory further.

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
  num_steps, trace_every = _fit_stopping.schedule(num_steps, trace_every)
  loss, optimizer = checked_loss(loss), checked_optimizer(optimizer)
  size = _fit_stopping.batch_size(params_batch)
  draws = _fit_stopping.variance_draws(gradient_variance_draws)
  rule = _fit_stopping.stopping_rule(tolerance, gradient_tolerance)
  if not isinstance(common_random_numbers, bool):
    raise TypeError(
      f"`common_random_numbers` must be a bool, got {type(common_random_numbers).__name__}."
    )
  devices = jax.devices()
  chunk = _checks.positive_int(chunk_size, "chunk_size") if chunk_size is not None else 1 << 16
  chunk = min(size, chunk)
  per_device = -(-chunk // len(devices))
  group = group_size_of(group_size, rule, per_device, devices[0].platform)
  chunk = -(-per_device // group) * group * len(devices)  # Whole groups on every device.
  num_chunks = -(-size // chunk)
  passes = num_chunks if rule is not None else num_chunks * (chunk // len(devices) // group)
  progress = _fit_progress.start(progress, passes * num_steps, "fit_batch")
  loss_traced, loss_static = _fit_tree.split(loss, "loss")
  params_traced, params_static = _fit_tree.split(
    params_batch, "params_batch", _fit_tree.is_param_array
  )
  keys = key if common_random_numbers else jax.random.split(key, size)
  config = (rule, num_steps, trace_every, draws, progress if rule is None else None)
  results = []
  try:
    for start in range(0, size, chunk):
      stop = min(start + chunk, size)
      whole = start == 0 and stop == size == chunk  # One exact chunk: no slicing or padding.
      chunk_params = params_traced if whole else slice_and_pad(params_traced, start, stop, chunk)
      chunk_keys = (
        keys if whole or common_random_numbers else slice_and_pad(keys, start, stop, chunk)
      )
      if len(devices) > 1:
        chunk_params = jax.device_put(chunk_params, sharding(len(devices)))
        if not common_random_numbers:  # A single key stays replicated.
          chunk_keys = jax.device_put(chunk_keys, sharding(len(devices)))
      result = chunk_jit(
        loss_traced, loss_static, chunk_params, params_static, optimizer, chunk_keys, config,
        common_random_numbers, group, len(devices),
      )  # fmt: skip
      results.append(result if whole else jax.tree.map(lambda x, n=stop - start: x[:n], result))
      if progress is not None:  # Callbacks are asynchronous: let this chunk's finish first.
        jax.block_until_ready(result)
        if rule is not None:
          progress.advance(num_steps)
  finally:
    if progress is not None:
      progress.close()
  combined = (
    results[0] if len(results) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
  )
  warn_if_diverged(combined.diverged_at)
  return combined._replace(params=_fit_tree.merge(combined.params, params_static))
