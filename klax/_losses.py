"""The losses klax's objectives return: pytrees whose array fields are data, the rest configuration.

Each loss is a frozen dataclass registered as a pytree (`jax.tree_util.register_pytree_node`), called as
`loss(params, key) -> scalar`. Its data (the samples of `ForwardKLLoss`; a target that is a
pytree of arrays, such as a `jax.tree_util.Partial` over a data set) are pytree leaves; the
family, the sizes and a target that is a plain function are static (part of the tree structure),
so a loss can be passed through `jax.jit` as an argument. `klax.fit`, `klax.fit_batch` and `klax.fit_step` take the loss
as an argument, tracing its array leaves and keying the compiled program on the rest, so a new
loss with new data of the same shape reuses the compiled fit, and no data set is embedded in a
program as a constant. `dataclasses.replace(loss, data=batch)` gives the loss of another batch.

Two kernels make a new reverse-KL objective a few lines: `variational_draws` (the weighted log
weights t = log p̃(x) − log q_θ(x) with the gradient path of the chosen estimator) and
`score_function_surrogate` (zero in value; its gradient is the score-function estimate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from klax import _variational
from klax._family import Family
from klax._variational import WeightedDraws


def _is_data(value: Any) -> bool:
  """True for a value whose leaves are all arrays or numbers: traced; anything else is static."""
  leaves = jax.tree.leaves(value)
  return bool(leaves) and all(
    isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)) for x in leaves
  )


def _loss_pytree(data_fields: tuple[str, ...], meta_fields: tuple[str, ...]):
  """Registers a frozen dataclass (`eq=False`: compared by identity) as a pytree.

  `meta_fields` are always static; each of `data_fields` is a child when it is data (its leaves
  all arrays or numbers) and static otherwise (e.g. a plain `log_density` function, which is
  then part of the tree structure, compared by identity).
  """

  def register(cls):
    def flatten(loss):
      values = [getattr(loss, name) for name in data_fields]
      children = tuple(v if _is_data(v) else None for v in values)
      static = tuple(None if _is_data(v) else v for v in values)
      return children, (static, tuple(getattr(loss, name) for name in meta_fields))

    def unflatten(aux, children):
      static, meta = aux
      values = [s if c is None else c for c, s in zip(children, static, strict=True)]
      return cls(
        **dict(zip(data_fields, values, strict=True)), **dict(zip(meta_fields, meta, strict=True))
      )

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls

  return register


def _log_prob(family: Family) -> Callable:
  if family.log_prob is not None:
    return family.log_prob
  return lambda params, x: family.dist(params).log_prob(x)


def variational_draws(
  family: Family,
  log_density: Callable,
  params: Any,
  key: jax.Array,
  num_samples: int,
  gradient: str = "reparam",
) -> WeightedDraws:
  """Weighted draws from q_θ = family.dist(θ) and their log weights, for building objectives.

  t_i = log p̃(x_i) − log q_θ(x_i), with weights π_i (Σ_i π_i = 1): x_i ~ q_θ and π_i = 1/S, or,
  for a mixture Σ_k w_k q_k with reparameterisable components and a pathwise `gradient`, S draws
  from each component with π_ks = w_k / S, so that Σ_i π_i f(x_i) is unbiased for E_q[f] with
  an unbiased pathwise gradient in the weights too. The gradient path: "reparam" through x and
  log q_θ(x); "stl" through x (and π) with log q at stopped parameters; "score" none through x.

  Args:
    family: a `klax.families.Family`.
    log_density: log p̃(x) for one point x; may be unnormalised.
    params: θ.
    key: a `jax.random` key.
    num_samples: S, draws (per component for a mixture).
    gradient: "reparam", "stl" or "score".

  Returns:
    `WeightedDraws(log_w, log_q, log_pi)`, each of shape [N] (N = S, or S·K for a mixture).
    Shapes are checked while tracing: `ValueError` if log p̃ of one point is not a scalar or
    log q_θ of the draws is not [N]; "reparam" and "stl" raise for a q whose samples carry no
    pathwise gradient.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> log_p = lambda x: -0.5 * x**2  # N(0, 1) up to log Z = log √(2π)
    >>> params = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> draws = klax.variational_draws(klax.families.normal(), log_p, params, jax.random.key(0), 8)
    >>> t = draws.log_w  # q ∝ p̃: every t_i = log Z
    >>> t.shape, round(float(t.min()), 4), round(float(t.max()), 4)
    ((8,), 0.9189, 0.9189)
  """
  if gradient not in _variational.GRADIENTS:
    raise ValueError(f"`gradient` must be one of {_variational.GRADIENTS}, got {gradient!r}.")
  return _variational.draw(family.dist, jax.vmap(log_density), params, key, num_samples, gradient)


def score_function_surrogate(f: jax.Array, log_q: jax.Array) -> jax.Array:
  """A zero whose gradient is the leave-one-out score-function estimate of ∇_θ E_{q_θ}[f].

  s = (1/S) Σ_s (f_s − b_s) log q_θ(x_s) − the same with stopped gradients, with f stopped and
  the baseline b_s = mean_{t≠s} f_t (independent of x_s, so the estimate is unbiased):
  value + score_function_surrogate(f, log_q) has the value of `value` and the gradient
  ∇ value + (1/S) Σ_s (f_s − b_s) ∇ log q_θ(x_s). For ∇ E_q[f] alone, stop the gradient of
  `value` (an estimate of E_q[f] from the same draws).

  Args:
    f: f(x_s) for S ≥ 2 draws x_s ~ q_θ drawn without gradient, shape [S].
    log_q: log q_θ(x_s), shape [S], differentiable in θ.

  Returns:
    A scalar 0 with the score-function gradient.

  Examples:
    >>> import jax, jax.numpy as jnp, klax
    >>> family, log_p = klax.families.normal(), lambda x: -0.5 * (x - 1.0) ** 2
    >>> def negative_elbo(params, key):  # reverse_kl_loss(..., gradient="score") in a few lines
    ...   draws = klax.variational_draws(family, log_p, params, key, 16, gradient="score")
    ...   value = jax.lax.stop_gradient(-jnp.mean(draws.log_w))  # its gradient: the surrogate's
    ...   return value + klax.score_function_surrogate(-draws.log_w, draws.log_q)
    >>> params = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    >>> grads = jax.grad(negative_elbo)(params, jax.random.key(0))
    >>> bool(grads["loc"] < 0)  # the target lies to the right: the ELBO rises with loc
    True
  """
  f, log_q = jnp.asarray(f), jnp.asarray(log_q)
  if f.ndim != 1 or f.shape != log_q.shape or f.shape[0] < 2:
    raise ValueError(
      f"`f` and `log_q` must have the same shape [S] with S >= 2, got {f.shape} and {log_q.shape}."
    )
  f = jax.lax.stop_gradient(f)
  baseline = (jnp.sum(f) - f) / (f.shape[0] - 1)
  surrogate = jnp.mean((f - baseline) * log_q)
  return surrogate - jax.lax.stop_gradient(surrogate)


@_loss_pytree(data_fields=("data",), meta_fields=("family", "batch_size"))
@dataclasses.dataclass(frozen=True, eq=False)
class ForwardKLLoss:
  """−(1/n) Σ_i log q_θ(x_i) over `data` (or a minibatch of `batch_size` drawn with `key`)."""

  family: Family
  data: jax.Array
  batch_size: int | None = None

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The mean negative log-likelihood of the data (or of a minibatch) under q_θ."""
    data, n = self.data, self.data.shape[0]
    event_shape = _variational.event_shape(self.family, params)
    if data.shape[1:] != event_shape:
      raise ValueError(
        f"`data` must have shape [n, *event_shape] = [n, {', '.join(map(str, event_shape))}] for "
        f"this family, got {data.shape}."
      )
    if self.batch_size is not None:
      data = data[jax.random.randint(key, (self.batch_size,), 0, n)]
    log_q = _log_prob(self.family)(params, data)
    if log_q.shape != data.shape[:1]:
      raise ValueError(
        f"The family's log_prob of {data.shape[0]} points must have shape ({data.shape[0]},), "
        f"got {log_q.shape}: the family's distribution must have batch shape ()."
      )
    return -jnp.mean(log_q)


@_loss_pytree(data_fields=("log_density",), meta_fields=("family", "num_samples", "gradient"))
@dataclasses.dataclass(frozen=True, eq=False)
class ReverseKLLoss:
  """−Σ_i π_i [log p̃(x_i) − log q_θ(x_i)], x_i ~ q_θ: the negative ELBO."""

  family: Family
  log_density: Callable
  num_samples: int
  gradient: str = "reparam"

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The negative ELBO estimate, with the gradient of `self.gradient`."""
    draws = variational_draws(
      self.family, self.log_density, params, key, self.num_samples, self.gradient
    )
    value = -_variational.weighted_mean(draws.log_w, draws.log_pi)
    if self.gradient != "score":
      return value
    # The draws carry no gradient; log q_θ inside log_w would add the zero-mean score term.
    return jax.lax.stop_gradient(value) + score_function_surrogate(-draws.log_w, draws.log_q)


@_loss_pytree(data_fields=("log_density",), meta_fields=("family", "num_samples"))
@dataclasses.dataclass(frozen=True, eq=False)
class IWAELoss:
  """−log Σ_i π_i p̃(x_i) / q_θ(x_i), x_i ~ q_θ reparameterised: the negative IWAE bound."""

  family: Family
  log_density: Callable
  num_samples: int

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The negative importance-weighted bound's estimate."""
    draws = variational_draws(self.family, self.log_density, params, key, self.num_samples)
    return -_variational.weighted_log_mean_exp(draws.log_w, draws.log_pi)


@_loss_pytree(data_fields=("log_density",), meta_fields=("family", "num_samples", "alpha"))
@dataclasses.dataclass(frozen=True, eq=False)
class RenyiLoss:
  """−(1/(1 − α)) log Σ_i π_i (p̃(x_i) / q_θ(x_i))^{1−α}: the negative Rényi bound."""

  family: Family
  log_density: Callable
  num_samples: int
  alpha: float

  def __call__(self, params: Any, key: jax.Array) -> jax.Array:
    """The negative variational Rényi bound's estimate."""
    draws = variational_draws(self.family, self.log_density, params, key, self.num_samples)
    return -_variational.renyi_bound(draws.log_w, draws.log_pi, 1.0 - self.alpha)
