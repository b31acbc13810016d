"""Splitting pytrees into traced arrays and static configuration, as a fit's jit boundary does.

A fit's loss and parameters may be any pytrees. At the boundary of a compiled program their
leaves are sorted: arrays (and, for parameters, Python numbers) are traced arguments; every other
leaf (a function, a string, an activation, a flag) is static: hashed and compared with `==`, so
an equal leaf finds the compiled program again and a new one compiles anew. Inside, only the
inexact (floating or complex) leaves of the parameters are differentiated and updated; the others
pass through unchanged (the filter idea of equinox, without depending on it).
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def is_array(x) -> bool:
  """A leaf that is traced: a JAX or numpy array (or numpy scalar)."""
  return isinstance(x, jax.Array | np.ndarray | np.generic)


def is_param_array(x) -> bool:
  """A parameter leaf that is traced: an array or a Python number (not a bool)."""
  return is_array(x) or (isinstance(x, int | float | complex) and not isinstance(x, bool))


def is_differentiable(x) -> bool:
  """A parameter leaf that is differentiated and updated: an inexact array or a float."""
  if isinstance(x, float | complex):
    return True
  return is_array(x) and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class Static(NamedTuple):
  """The static part of a pytree: its structure and its non-array leaves (None where traced)."""

  treedef: Any
  leaves: tuple


def split(tree, name: str, traced=is_array) -> tuple[list, Static]:
  """(the traced leaves, None elsewhere; the static rest), checked hashable for `jax.jit`."""
  leaves, treedef = jax.tree.flatten(tree)
  static = Static(treedef, tuple(None if traced(x) else x for x in leaves))
  try:
    hash(static)
  except TypeError as error:
    raise TypeError(
      f"`{name}` has a leaf that is neither an array nor hashable ({error}); non-array leaves "
      "are static configuration and must be hashable."
    ) from None
  return [x if traced(x) else None for x in leaves], static


def merge(traced: list, static: Static):
  """The pytree that `split` took apart."""
  leaves = [s if t is None else t for t, s in zip(traced, static.leaves, strict=True)]
  return jax.tree.unflatten(static.treedef, leaves)


def partition(params):
  """(differentiable leaves, None elsewhere; the other leaves, None elsewhere), as equinox does."""
  return (
    jax.tree.map(lambda x: x if is_differentiable(x) else None, params),
    jax.tree.map(lambda x: None if is_differentiable(x) else x, params),
  )


def combine(differentiable, rest):
  """The parameters that `partition` took apart."""
  return jax.tree.map(
    lambda d, r: r if d is None else d, differentiable, rest, is_leaf=lambda x: x is None
  )
