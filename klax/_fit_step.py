"""One guarded optimiser step, usable in any loop: `fit_init` and `fit_step`.

In the shape of optax's and blackjax's algorithms: a `FitState` NamedTuple, `fit_init(params,
optimizer)`, and `fit_step(loss, optimizer, state, key) -> (FitState, StepInfo)`. A step
evaluates fₜ = loss(θₜ, key) and ∇fₜ, asks the optimiser for an update (passing `value`, `grad`
and `value_fn = loss(·, key)`, so that `optax.lbfgs` and its line search work) and applies it,
unless ∇fₜ, θₜ₊₁ or (with `check_loss`) fₜ is not finite: then the fit is frozen at θₜ from
that step on and `diverged_at` records it. `fallback` holds the parameters of the last checked
step that succeeded, which is what a fit that diverged returns (`FitState.fitted_params`).
`klax.fit` and `klax.fit_batch` are loops over this step (with key fold_in(key, t) at step t).
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from klax import _fit_tree


class FitState(NamedTuple):
  """The state of a fit between steps.

  Attributes:
    params: θₜ; frozen at the step where the fit diverged. Non-array leaves pass through.
    fallback: the parameters of the last step whose loss was checked and found finite, with a
      finite gradient and update (the starting parameters before any); a diverged fit returns them.
    opt_state: the optimiser's state (over the differentiable leaves of `params`).
    step: the number of steps taken.
    diverged_at: the first step at which a checked value was not finite; −1 if none.
  """

  params: Any
  fallback: Any
  opt_state: Any
  step: jax.Array
  diverged_at: jax.Array

  @property
  def fitted_params(self):
    """θₜ, or, for a fit that diverged, `fallback`: the last parameters checked finite."""
    return select(self.diverged_at >= 0, self.fallback, self.params)


class StepInfo(NamedTuple):
  """What one step saw.

  Attributes:
    loss: fₜ = loss(θₜ, key) at the step's starting parameters; NaN once the fit is frozen.
    grads: ∇fₜ over the differentiable leaves of θₜ (None at the others).
    applied: whether the update was applied (False at and after divergence).
  """

  loss: jax.Array
  grads: Any
  applied: jax.Array


def all_finite(tree) -> jax.Array:
  """Whether every entry of every array leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _fit_tree.is_param_array(x)]
  return functools.reduce(jnp.logical_and, leaves, jnp.array(True))


def select(condition, new, old):
  """`new` where `condition` else `old`, leaf by leaf (non-array leaves are taken from `new`)."""

  def one(a, b):
    if not _fit_tree.is_param_array(a):
      return a
    # A batch of conditions selects whole members: the leading axes of every leaf.
    extra = jnp.ndim(a) - jnp.ndim(condition)
    return jnp.where(jnp.reshape(condition, jnp.shape(condition) + (1,) * extra), a, b)

  return jax.tree.map(one, new, old)


def init(params, optimizer) -> FitState:
  """The unjitted `fit_init` (for use inside compiled drivers)."""
  differentiable, _ = _fit_tree.partition(params)
  minus_one = jnp.array(-1, jnp.int32)
  return FitState(
    params, params, optimizer.init(differentiable), jnp.array(0, jnp.int32), minus_one
  )


def _value_and_grad(f, params, opt_state, reuse_line_search: bool):
  """f(θ) and ∇f(θ), taken from `opt_state` where a line search stored them and reuse is asked.

  A line search (`optax.lbfgs`'s zoom) evaluates the loss and gradient at the point it accepts
  and keeps them in its state (`value`, `grad`); for a deterministic loss they are exactly the
  next step's, so the step need not evaluate them again (optax's `value_and_grad_from_state`).
  """
  if reuse_line_search:
    stored = [optax.tree_utils.tree_get(opt_state, name) for name in ("value", "grad")]
    if all(x is not None for x in stored):
      return optax.value_and_grad_from_state(f)(params, state=opt_state)
  return jax.value_and_grad(f)(params)


def step(
  loss, optimizer, state: FitState, key, *, check_loss: bool = True, reuse_line_search=False
) -> tuple[FitState, StepInfo]:
  """The unjitted `fit_step`, for an optimiser with extra-args support."""
  differentiable, rest = _fit_tree.partition(state.params)

  def f(p):
    return loss(_fit_tree.combine(p, rest), key)

  value, grads = _value_and_grad(f, differentiable, state.opt_state, reuse_line_search)
  updates, opt_state = optimizer.update(
    grads, state.opt_state, differentiable, value=value, grad=grads, value_fn=f
  )
  new = optax.apply_updates(differentiable, updates)
  finite = all_finite(grads) & all_finite(new)
  if check_loss:
    finite &= jnp.isfinite(value)
  running = state.diverged_at < 0
  apply = finite & running
  new_state = FitState(
    params=_fit_tree.combine(select(apply, new, differentiable), rest),
    # θₜ's loss is known to be finite only on a checked step: only those move the fallback.
    fallback=select(apply, state.params, state.fallback) if check_loss else state.fallback,
    opt_state=select(apply, opt_state, state.opt_state),
    step=state.step + 1,
    diverged_at=jnp.where(running & ~finite, state.step, state.diverged_at).astype(jnp.int32),
  )
  return new_state, StepInfo(jnp.where(running, value, jnp.nan), grads, apply)


def checked_optimizer(optimizer):
  """`optimizer`, checked, with optax's extra-args support (one wrapper per object)."""
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise TypeError(
      f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}."
    )
  return _with_extra_args(optimizer)


@functools.lru_cache(maxsize=128)
def _with_extra_args(optimizer):
  """One wrapper per optimizer object, so that the compiled fit is found again on the next call."""
  return optax.with_extra_args_support(optimizer)


def checked_loss(loss):
  """`loss`, checked callable."""
  if not callable(loss):
    raise TypeError(f"`loss` must be a callable loss(params, key), got {type(loss).__name__}.")
  return loss


def fit_init(params, optimizer) -> FitState:
  """The state of a fit at θ₀ = `params`: `FitState(params, params, optimizer.init(θ₀), 0, −1)`.

  Args:
    params: the starting parameters, any pytree; its inexact array leaves (and floats) are
      fitted, every other leaf (an integer array, a function, a string) passes through unchanged.
    optimizer: an optax `GradientTransformation` (its state covers the fitted leaves only).

  Returns:
    The `FitState` to pass to `fit_step`.

  Examples:
    >>> import jax.numpy as jnp, optax, klax
    >>> state = klax.fit_init({"w": jnp.zeros(2), "activation": jnp.tanh}, optax.adam(0.1))
    >>> int(state.step), int(state.diverged_at), state.params["activation"] is jnp.tanh
    (0, -1, True)
  """
  state = init(params, checked_optimizer(optimizer))
  # Strongly typed, as the state a step returns (and as `scan` promotes its carry), so that the
  # second step finds the first step's compiled program.
  return jax.tree.map(
    lambda x: jnp.asarray(x, jnp.result_type(x)) if _fit_tree.is_param_array(x) else x, state
  )


_STEP_STATIC = ("loss_static", "optimizer", "state_static", "check_loss", "reuse_line_search")


@functools.partial(jax.jit, static_argnames=_STEP_STATIC)
def _step_jit(loss_traced, loss_static, optimizer, traced, state_static, key, check_loss, reuse_line_search):  # fmt: skip
  loss = _fit_tree.merge(loss_traced, loss_static)
  state = _fit_tree.merge(traced, state_static)
  state, info = step(
    loss, optimizer, state, key, check_loss=check_loss, reuse_line_search=reuse_line_search
  )
  return _fit_tree.split(state, "state", _fit_tree.is_param_array)[0], info


def fit_step(
  loss,
  optimizer,
  state: FitState,
  key: jax.Array,
  *,
  check_loss: bool = True,
  reuse_line_search: bool = False,
) -> tuple[FitState, StepInfo]:
  """One guarded optimiser step: θₜ₊₁ = θₜ + update(∇_θ loss(θₜ, key)), unless a value is not finite.

  fₜ = loss(θₜ, key) and ∇fₜ are evaluated, the optimiser is asked for an update (with `value`,
  `grad` and `value_fn = loss(·, key)`: `optax.lbfgs` works), and the update is applied if ∇fₜ,
  θₜ₊₁ and fₜ are finite and the fit has not diverged; otherwise θ and the optimiser's state
  stay as they were, for this step and every later one, and `diverged_at` is set to this step.
  `klax.fit(loss, params, optimizer, key, n)` is `fit_init` followed by n of these steps with
  keys `fold_in(key, t)`, t = 0, …, n − 1 (bit for bit). Compiled at its entry: a loss that is
  a pytree with new arrays of the same shapes (e.g. `jax.tree_util.Partial(fn, data)`) and the
  same optimiser object find the compiled step again.

  Args:
    loss: `loss(params, key) -> scalar`, a callable pytree (array leaves are traced).
    optimizer: the optax `GradientTransformation` that `fit_init` was given.
    state: the fit's `FitState`.
    key: the key this step's loss is evaluated with.
    check_loss: test fₜ for finiteness too (False: only gradients and updates are tested, and
      a compiled loop may skip evaluating the loss when the optimiser does not use it).
    reuse_line_search: take fₜ and ∇fₜ from the line search's state where it stored them (exact
      for a loss that ignores its key; what `fit` does with a stopping rule).

  Returns:
    `(FitState, StepInfo)`: the next state and this step's loss, gradient and whether the
      update was applied. The parameters to keep at the end are `state.fitted_params`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, klax
    >>> loss = lambda params, key: jnp.sum((params - 3.0) ** 2)
    >>> optimizer, key = optax.sgd(0.25), jax.random.key(0)
    >>> state = klax.fit_init(jnp.zeros(2), optimizer)
    >>> for t in range(3):
    ...   state, info = klax.fit_step(loss, optimizer, state, jax.random.fold_in(key, t))
    >>> state.fitted_params.tolist(), float(info.loss), int(state.diverged_at)
    ([2.625, 2.625], 1.125, -1)
  """
  loss, optimizer = checked_loss(loss), checked_optimizer(optimizer)
  loss_traced, loss_static = _fit_tree.split(loss, "loss")
  traced, state_static = _fit_tree.split(state, "state", _fit_tree.is_param_array)
  new_traced, info = _step_jit(
    loss_traced, loss_static, optimizer, traced, state_static, key, bool(check_loss),
    bool(reuse_line_search),
  )  # fmt: skip
  return _fit_tree.merge(new_traced, state_static), info
