"""Types of klax's public signatures: arrays, PRNG keys, distributions, losses, option names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import Protocol
from typing import runtime_checkable

import jax

PRNGKey = jax.Array  # A `jax.random.key(...)` (or a legacy uint32 key).
Params = Any  # A pytree of arrays (non-array leaves pass through a fit unchanged).
LogDensity = Callable[[jax.Array], jax.Array]  # log p̃(x) for one point x, a scalar.
Loss = Callable[[Any, jax.Array], jax.Array]  # loss(params, key) -> scalar.
Estimator = Literal["k1", "k2", "k3"]
Gradient = Literal["reparam", "score", "stl"]


@runtime_checkable
class Distribution(Protocol):
  """What klax needs of a distribution: distrax's and TFP-on-JAX's all have it."""

  @property
  def batch_shape(self) -> tuple[int, ...]: ...

  @property
  def event_shape(self) -> tuple[int, ...]: ...

  def log_prob(self, value: Any) -> jax.Array: ...

  def sample(self, *args: Any, **kwargs: Any) -> jax.Array: ...
