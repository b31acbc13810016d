"""Argument checks shared by klax's public functions.

Static problems (types, ranks, shapes, names) raise at trace time, so they raise under `jax.jit`
too. Value problems (a negative probability, say) can only be seen on concrete arrays: outside
`jit` they raise `ValueError`; inside `jit` each function documents what it returns instead.
"""

from __future__ import annotations

from typing import Any
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

ESTIMATORS = ("k1", "k2", "k3")


def float_array(x: Any, name: str) -> jax.Array:
  """Returns `x` as a floating-point JAX array, or raises `TypeError` naming `name`."""
  if isinstance(x, (str, bytes)) or x is None:
    raise TypeError(f"`{name}` must be an array of floats, got {type(x).__name__}.")
  try:
    array = jnp.asarray(x)
  except TypeError as error:
    raise TypeError(f"`{name}` must be an array of floats, got {type(x).__name__}.") from error
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must have a floating-point dtype, got {array.dtype}; "
      f"cast it first, e.g. `jnp.asarray({name}, jnp.float32)`."
    )
  return array


def normalize_axis(axis: int, ndim: int, name: str) -> int:
  """Returns `axis` as a non-negative index into an array of rank `ndim`."""
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise TypeError(f"`axis` must be an int, got {type(axis).__name__}.")
  if ndim == 0:
    raise ValueError(f"`{name}` must have at least one dimension to reduce over, got a scalar.")
  if not -ndim <= axis < ndim:
    raise ValueError(f"`axis`={axis} is out of range for `{name}` of rank {ndim}.")
  return int(axis) % ndim


def same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
  """Raises `ValueError` unless `a` and `b` have the same shape."""
  if a.shape != b.shape:
    raise ValueError(
      f"`{name_a}` and `{name_b}` must have the same shape, got {a.shape} and {b.shape}."
    )


def positive_int(value: Any, name: str) -> int:
  """Returns `value` as a Python int, or raises if it is not a positive integer."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be a positive Python int, got {type(value).__name__}.")
  if value <= 0:
    raise ValueError(f"`{name}` must be positive, got {value}.")
  return int(value)


def estimator_name(estimator: Any) -> Literal["k1", "k2", "k3"]:
  """Returns `estimator` if it names a KL estimator, or raises `ValueError`."""
  if estimator not in ESTIMATORS:
    raise ValueError(f"`estimator` must be one of {ESTIMATORS}, got {estimator!r}.")
  return estimator


def is_concrete(*arrays: Any) -> bool:
  """True when none of `arrays` is a tracer, i.e. their values can be checked now."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def distribution(d: Any, name: str) -> Any:
  """Raises `TypeError` unless `d` looks like a distrax or TFP distribution."""
  if not all(hasattr(d, attr) for attr in ("log_prob", "sample", "event_shape")):
    raise TypeError(
      f"`{name}` must be a distrax or TFP-on-JAX distribution, got {type(d).__name__}."
    )
  return d


def same_event_shape(p: Any, q: Any) -> None:
  """Raises `ValueError` unless `p` and `q` have the same event shape."""
  if tuple(p.event_shape) != tuple(q.event_shape):
    raise ValueError(
      "`p` and `q` must have the same event shape, got "
      f"{tuple(p.event_shape)} and {tuple(q.event_shape)}."
    )


def promote_low_precision(x: jax.Array) -> jax.Array:
  """Promotes float16/bfloat16 to float32, so that sums of many terms stay accurate."""
  if jnp.finfo(x.dtype).bits < 32:
    return x.astype(jnp.float32)
  return x


def mask(where: Any, shape: tuple, name: str) -> jax.Array:
  """Returns `where` as a boolean array, or raises unless it is one that broadcasts to `shape`."""
  array = None if isinstance(where, (str, bytes)) else jnp.asarray(where)
  if array is None or array.dtype != jnp.bool_:
    got = type(where).__name__ if array is None else array.dtype
    raise TypeError(f"`{name}` must be a boolean mask, got {got}.")
  try:
    broadcast = jnp.broadcast_shapes(array.shape, tuple(shape))
  except ValueError:
    broadcast = None
  if broadcast != tuple(shape):
    raise ValueError(f"`{name}` of shape {array.shape} does not broadcast to the input's {shape}.")
  return array


def prng_key(key: Any, name: str) -> Any:
  """Raises `TypeError` unless `key` is a `jax.random` key (typed, or a raw uint32 [..., 2])."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return key
  if dtype == jnp.uint32 and getattr(key, "shape", ())[-1:] == (2,):
    return key
  raise TypeError(
    f"`{name}` must be a `jax.random` key (e.g. `jax.random.key(0)`), got {type(key).__name__}"
    + (f" of dtype {dtype}." if dtype is not None else ".")
  )


def finite_positive(value: Any, name: str) -> float:
  """Returns `value` as a Python float, or raises unless it is a finite positive real number."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"`{name}` must be a positive float, got {type(value).__name__}.")
  if not (np.isfinite(value) and value > 0):
    raise ValueError(f"`{name}` must be positive and finite, got {value}.")
  return float(value)


def callable_or_none(value: Any, name: str) -> Any:
  """Raises `TypeError` unless `value` is callable or None."""
  if value is not None and not callable(value):
    raise TypeError(f"`{name}` must be a function or None, got {type(value).__name__}.")
  return value
