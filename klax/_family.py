"""The family protocol: `Family(init, dist)` and batches of starting parameters."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import distrax
import jax

from klax import _checks


class Family(NamedTuple):
  """A parametric family: `init(key) -> params` and `dist(params) -> distrax distribution`.

  `log_prob(params, x)`, when given, equals `dist(params).log_prob(x)` and is what
  `klax.forward_kl_loss` evaluates: a direct formula for the normal families, which in a batched
  fit over many data points is about 1.5× faster than building a distrax distribution.
  """

  init: Callable[[jax.Array], Any]
  dist: Callable[[Any], distrax.Distribution]
  log_prob: Callable[[Any, jax.Array], jax.Array] | None = None


def cached(factory: Callable[..., Any]) -> Callable[..., Any]:
  """`factory` returning the same `Family` object for equal (hashable) arguments.

  A family is configuration: a fit keyed on it (through a loss) is compiled again for a new
  object, so `normal()` called twice must give one object. Arguments are bound to the signature
  with its defaults first, so `diag_normal(2)`, `diag_normal(d=2)` and `normal()`,
  `normal(loc_scale=1.0)` are one call each. Unhashable arguments (an array) build a new family
  each time.
  """
  signature = inspect.signature(factory)
  cache = functools.cache(
    lambda key: factory(*(v for _, v in key[0]), **{k: v for k, _, v in key[1]})
  )

  @functools.wraps(factory)
  def build(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    # Typed, so that `d=2.0` or `d=True` is checked by the factory, not served `d=2`'s family.
    key = (
      tuple((type(v), v) for v in bound.args),
      tuple((k, type(v), v) for k, v in sorted(bound.kwargs.items())),
    )
    try:
      return cache(key)
    except TypeError as error:
      if "unhashable" not in str(error):
        raise
      return factory(*args, **kwargs)

  return build


def init_batch(family: Family, key: jax.Array, batch_size: int) -> Any:
  """`batch_size` independent `family.init` draws stacked along a leading axis.

  params[i] = family.init(split(key, batch_size)[i]), for i = 0 … batch_size − 1.

  Args:
    family: a `Family`.
    key: a `jax.random` key, split into `batch_size` keys.
    batch_size: the number of starts B.

  Returns:
    The parameters pytree with a leading axis of size B on every leaf, for `klax.fit_batch`.

  Examples:
    >>> import jax, klax
    >>> starts = klax.families.init_batch(klax.families.normal(), jax.random.key(0), 8)
    >>> starts["loc"].shape
    (8,)
  """
  batch_size = _checks.positive_int(batch_size, "batch_size")
  return jax.vmap(family.init)(jax.random.split(key, batch_size))
