"""KL divergence, entropy and cross-entropy of discrete distributions given as arrays.

Each function reduces along `axis` (default: the last) and keeps every other axis, so a batch of
distributions is a batch of rows. `where` (a boolean array broadcastable to the input) selects the
entries that take part: masked-out entries are ignored by the sums and, for the `*_logits`
functions, by the softmax normalisation too (as `jax.nn.log_softmax(..., where=...)`).

Conventions (the same as `scipy.special.rel_entr` and `scipy.stats.entropy`):
- 0 · log 0 = 0 and 0 · log(0 / q) = 0: entries where p = 0 contribute nothing.
- p > 0 = q gives +inf (also where p's probability underflows but is not 0 on paper).
- Logits of -inf are probabilities of exactly 0, handled without NaN.
- A row in which p has no outcome (every logit −inf, or every entry masked out) is an empty sum:
  0, with zero gradients. For the `*_logits` functions a row in which q has no outcome, and p
  has one, is +inf (KL and cross-entropy).
- NaN in a row gives NaN for that row; so does a logit of +inf (softmax is undefined there).
- XLA flushes subnormal numbers to zero (float32: below 1.2e-38), so such a probability counts
  as 0: a q of 1e-40 where p > 0 gives +inf.
- Gradients are finite wherever the value is finite. At p = 0 the derivative with respect to p is
  taken as 0 (its one-sided limit is -inf; this is the convention of `jax.scipy.special.entr`).

Input checks: arguments must be floating-point arrays of the same shape with at least one
outcome along `axis`, and `where` a boolean array that broadcasts to them (`TypeError` or
`ValueError` at trace time otherwise). float16 and bfloat16 inputs are promoted to float32 and
give float32 results; other dtypes are kept. The `*_probs` functions also need valid
probabilities: non-negative and summing to 1 along `axis` within `probability_tolerance(dtype)`
(1e-4, or the machine epsilon of a coarser input dtype: a bfloat16 softmax is accepted). Outside
`jit` an invalid `p` or `q` raises `ValueError`; inside `jit` (or `vmap`) an invalid row is NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from klax import _checks
from klax._logits import kl_from_logits
from klax._logits import log_softmax_rows
from klax._logits import mask_logits
from klax._logits import prob_times

PROBABILITY_TOLERANCE = 1e-4


def probability_tolerance(dtype) -> float:
  """How far from 1 a row of probabilities of `dtype` may sum: max(1e-4, machine epsilon)."""
  return max(PROBABILITY_TOLERANCE, float(jnp.finfo(dtype).eps))


def _checked_arrays(arrays: dict, axis: int, where) -> tuple[list[jax.Array], int, float]:
  """Checks `arrays` (name -> array-like) and `where`; returns the arrays, axis and tolerance.

  The arrays must be floats of one shape with at least one outcome along `axis`; the tolerance
  is `probability_tolerance` of the coarsest input dtype (before low precision is promoted).
  """
  raw = [_checks.float_array(v, k) for k, v in arrays.items()]
  names = list(arrays)
  for name, array in zip(names[1:], raw[1:], strict=True):
    _checks.same_shape(raw[0], array, names[0], name)
  axis = _checks.normalize_axis(axis, raw[0].ndim, names[0])
  if raw[0].shape[axis] == 0:
    raise ValueError(
      f"`{names[0]}` must have at least one outcome along axis {axis}, got shape {raw[0].shape}."
    )
  if where is not None:
    _checks.mask(where, raw[0].shape, "where")
  tolerance = max(probability_tolerance(x.dtype) for x in raw)
  return [_checks.promote_low_precision(x) for x in raw], axis, tolerance


def _valid_probabilities(x: jax.Array, name: str, axis: int, where, tolerance) -> jax.Array:
  """Per-row validity of `x` as probabilities; raises `ValueError` when it can see them.

  A row with no entry inside `where` is valid (an empty sum); NaN is never valid.
  """
  non_negative = jnp.all(x >= 0, axis=axis, where=where)
  total = jnp.sum(x, axis=axis, where=where)
  valid = non_negative & (jnp.abs(total - 1) <= tolerance)
  if where is not None:
    valid |= ~jnp.any(jnp.broadcast_to(where, x.shape), axis=axis)
  if _checks.is_concrete(valid) and not bool(jnp.all(valid)):
    raise ValueError(
      f"`{name}` must hold probabilities along axis {axis}: non-negative, not NaN, and summing "
      f"to 1 within {tolerance:.3g}. Use the `*_logits` function for unnormalised "
      "log-probabilities."
    )
  return valid


def _nan_unless(valid: jax.Array, value: jax.Array) -> jax.Array:
  return jnp.where(valid, value, jnp.nan)


def _p_log_ratio(p: jax.Array, q: jax.Array) -> jax.Array:
  """Elementwise p · log(p / q), 0 where p = 0, with finite gradients there."""
  positive = p > 0
  safe_p = jnp.where(positive, p, 1.0)
  safe_q = jnp.where(positive, q, 1.0)
  return jnp.where(positive, p * (jnp.log(safe_p) - jnp.log(safe_q)), 0.0)


def _p_log_q(p: jax.Array, q: jax.Array) -> jax.Array:
  """Elementwise p · log q, 0 where p = 0, with finite gradients there."""
  positive = p > 0
  safe_q = jnp.where(positive, q, 1.0)
  return jnp.where(positive, p * jnp.log(safe_q), 0.0)


def kl_divergence_probs(p, q, axis: int = -1, *, where=None) -> jax.Array:
  """KL divergence between discrete distributions given by probabilities.

  KL(p ‖ q) = Σ_i p_i log(p_i / q_i), summed along `axis`.

  Args:
    p: probabilities of the first distribution (the one expectations are taken under).
    q: probabilities of the second distribution, same shape as `p`.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include.

  Returns:
    The divergence for each row, shape of `p` without `axis`: +inf where some p_i > 0 = q_i,
    0 for a row with nothing inside `where`, NaN for an invalid row inside `jit`.

  Examples:
    >>> import klax
    >>> float(klax.kl_divergence_probs([0.5, 0.5], [0.9, 0.1]))  # doctest: +ELLIPSIS
    0.5108...
  """
  (p, q), axis, tolerance = _checked_arrays({"p": p, "q": q}, axis, where)
  valid = _valid_probabilities(p, "p", axis, where, tolerance)
  valid &= _valid_probabilities(q, "q", axis, where, tolerance)
  return _nan_unless(valid, jnp.sum(_p_log_ratio(p, q), axis=axis, where=where))


def entropy_probs(p, axis: int = -1, *, where=None) -> jax.Array:
  """Shannon entropy (in nats) of a discrete distribution given by probabilities.

  H(p) = -Σ_i p_i log p_i, summed along `axis`.

  Args:
    p: probabilities (non-negative, summing to 1 along `axis`).
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include.

  Returns:
    The entropy of each row, the shape of `p` without `axis` (0 for a row with nothing inside
    `where`, NaN for an invalid row inside `jit`).

  Examples:
    >>> import klax
    >>> float(klax.entropy_probs([0.5, 0.5]))  # log 2  # doctest: +ELLIPSIS
    0.6931...
  """
  (p,), axis, tolerance = _checked_arrays({"p": p}, axis, where)
  valid = _valid_probabilities(p, "p", axis, where, tolerance)
  return _nan_unless(valid, 0.0 - jnp.sum(_p_log_q(p, p), axis=axis, where=where))


def cross_entropy_probs(p, q, axis: int = -1, *, where=None) -> jax.Array:
  """Cross-entropy (in nats) of `q` relative to `p`, both given by probabilities.

  H(p, q) = -Σ_i p_i log q_i = H(p) + KL(p ‖ q), summed along `axis`.

  Args:
    p: probabilities of the distribution expectations are taken under.
    q: probabilities of the second distribution, same shape as `p`.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include.

  Returns:
    The cross-entropy of each row, the shape of `p` without `axis`; +inf where some
    p_i > 0 = q_i.

  Examples:
    >>> import klax
    >>> float(klax.cross_entropy_probs([1.0, 0.0], [0.5, 0.5]))  # log 2  # doctest: +ELLIPSIS
    0.6931...
  """
  (p, q), axis, tolerance = _checked_arrays({"p": p, "q": q}, axis, where)
  valid = _valid_probabilities(p, "p", axis, where, tolerance)
  valid &= _valid_probabilities(q, "q", axis, where, tolerance)
  return _nan_unless(valid, 0.0 - jnp.sum(_p_log_q(p, q), axis=axis, where=where))


def kl_divergence_logits(p_logits, q_logits, axis: int = -1, *, where=None) -> jax.Array:
  """KL divergence between discrete distributions given by logits (unnormalised log-probs).

  KL(p ‖ q) = Σ_i p_i (log p_i − log q_i) with log p = log_softmax(p_logits) and
  log q = log_softmax(q_logits) along `axis`. This is the per-token KL of RLHF and distillation.

  Args:
    p_logits: unnormalised log-probabilities of p (any real numbers; −inf is probability 0).
    q_logits: unnormalised log-probabilities of q, same shape as `p_logits`.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include (the others get probability 0).

  Returns:
    The KL of each row, the shape of `p_logits` without `axis`: +inf where some p_i > 0 = q_i
    (or q has no outcome), 0 where p has none, NaN where a logit is NaN or +inf.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.kl_divergence_logits(jnp.log(jnp.array([0.5, 0.5])),
    ...                                 jnp.log(jnp.array([0.9, 0.1]))))  # doctest: +ELLIPSIS
    0.5108...
  """
  (p_logits, q_logits), axis, _ = _checked_arrays(
    {"p_logits": p_logits, "q_logits": q_logits}, axis, where
  )
  return kl_from_logits(p_logits, q_logits, axis, where)


def entropy_logits(logits, axis: int = -1, *, where=None) -> jax.Array:
  """Shannon entropy (in nats) of the distribution softmax(logits) along `axis`.

  H(p) = -Σ_i p_i log p_i with log p = log_softmax(logits).

  Args:
    logits: unnormalised log-probabilities.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include (the others get probability 0).

  Returns:
    The entropy of each row, the shape of `logits` without `axis`: 0 where p has no outcome,
    NaN where a logit is NaN or +inf.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.entropy_logits(jnp.zeros(4)))  # log 4  # doctest: +ELLIPSIS
    1.3862...
  """
  (logits,), axis, _ = _checked_arrays({"logits": logits}, axis, where)
  return _entropy_from_logits(logits, axis, where)


@functools.partial(jax.jit, static_argnames=("axis",))
def _entropy_from_logits(logits, axis: int, where) -> jax.Array:
  (log_p,), (p_empty,), undefined = log_softmax_rows([mask_logits(logits, where)], axis)
  value = 0.0 - jnp.sum(prob_times(log_p, log_p), axis=axis)
  return jnp.where(undefined, jnp.nan, jnp.where(p_empty, 0.0, value))


def cross_entropy_logits(p_logits, q_logits, axis: int = -1, *, where=None) -> jax.Array:
  """Cross-entropy of softmax(q_logits) relative to softmax(p_logits) along `axis`.

  H(p, q) = -Σ_i p_i log q_i = H(p) + KL(p ‖ q).

  Args:
    p_logits: unnormalised log-probabilities of the distribution expectations are taken under.
    q_logits: unnormalised log-probabilities of q, same shape.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include (the others get probability 0).

  Returns:
    The cross-entropy of each row, the shape of `p_logits` without `axis`: +inf where some
    p_i > 0 = q_i (or q has no outcome), 0 where p has none, NaN where a logit is NaN or +inf.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.cross_entropy_logits(jnp.zeros(2), jnp.zeros(2)))  # log 2  # doctest: +ELLIPSIS
    0.6931...
  """
  (p_logits, q_logits), axis, _ = _checked_arrays(
    {"p_logits": p_logits, "q_logits": q_logits}, axis, where
  )
  return _cross_entropy_from_logits(p_logits, q_logits, axis, where)


@functools.partial(jax.jit, static_argnames=("axis",))
def _cross_entropy_from_logits(p_logits, q_logits, axis: int, where) -> jax.Array:
  masked = [mask_logits(x, where) for x in (p_logits, q_logits)]
  (log_p, log_q), (p_empty, q_empty), undefined = log_softmax_rows(masked, axis)
  value = 0.0 - jnp.sum(prob_times(log_p, log_q), axis=axis)
  edge = jnp.where(undefined, jnp.nan, jnp.where(p_empty, 0.0, jnp.inf))
  return jnp.where(undefined | p_empty | q_empty, edge, value)
