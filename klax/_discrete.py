"""KL divergence, entropy and cross-entropy of discrete distributions given as arrays.

Each function reduces along `axis` (default: the last) and keeps every other axis, so a batch of
distributions is a batch of rows. `where` (a boolean array broadcastable to the input) selects the
entries that take part: masked-out entries are ignored by the sums and, for the `*_logits`
functions, by the softmax normalisation too (as `jax.nn.log_softmax(..., where=...)`).

Conventions (the same as `scipy.special.rel_entr` and `scipy.stats.entropy`):
- 0 · log 0 = 0 and 0 · log(0 / q) = 0: entries where p = 0 contribute nothing.
- p > 0 = q gives +inf.
- Logits of -inf are probabilities of exactly 0, handled without NaN.
- Gradients are finite wherever the value is finite. At p = 0 the derivative with respect to p is
  taken as 0 (its one-sided limit is -inf; this is the convention of `jax.scipy.special.entr`).

Input checks: arguments must be floating-point arrays of the same shape (`TypeError` or
`ValueError` at trace time otherwise). float16 and bfloat16 inputs are promoted to float32.
The `*_probs` functions also need valid probabilities: non-negative and summing to 1 within
`PROBABILITY_TOLERANCE` along `axis`. Outside `jit` an invalid `p` or `q` raises `ValueError`;
inside `jit` (or `vmap`) the result for an invalid row is NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from klax import _checks
from klax._series import exp_remainder

PROBABILITY_TOLERANCE = 1e-4


def _checked_arrays(arrays: dict, axis: int) -> tuple[list[jax.Array], int]:
  """Checks `arrays` (name -> array-like): float, same shape; returns them and the axis."""
  checked = [_checks.promote_low_precision(_checks.float_array(v, k)) for k, v in arrays.items()]
  names = list(arrays)
  for name, array in zip(names[1:], checked[1:], strict=True):
    _checks.same_shape(checked[0], array, names[0], name)
  return checked, _checks.normalize_axis(axis, checked[0].ndim, names[0])


def _valid_probabilities(x: jax.Array, name: str, axis: int, where) -> jax.Array:
  """Per-row validity of `x` as probabilities; raises `ValueError` when it can see them."""
  non_negative = jnp.all(x >= 0, axis=axis, where=where)
  total = jnp.sum(x, axis=axis, where=where)
  valid = non_negative & (jnp.abs(total - 1) <= PROBABILITY_TOLERANCE)
  if _checks.is_concrete(valid) and not bool(jnp.all(valid)):
    raise ValueError(
      f"`{name}` must hold probabilities along axis {axis}: non-negative, not NaN, and summing "
      f"to 1 within {PROBABILITY_TOLERANCE}. Use the `*_logits` function for unnormalised "
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
    The divergence for each row, shape of `p` without `axis`. +inf where some p_i > 0 = q_i.

  Examples:
    >>> import klax
    >>> float(klax.kl_divergence_probs([0.5, 0.5], [0.9, 0.1]))  # doctest: +ELLIPSIS
    0.5108...
  """
  (p, q), axis = _checked_arrays({"p": p, "q": q}, axis)
  valid = _valid_probabilities(p, "p", axis, where) & _valid_probabilities(q, "q", axis, where)
  return _nan_unless(valid, jnp.sum(_p_log_ratio(p, q), axis=axis, where=where))


def entropy_probs(p, axis: int = -1, *, where=None) -> jax.Array:
  """Shannon entropy (in nats) of a discrete distribution given by probabilities.

  H(p) = -Σ_i p_i log p_i, summed along `axis`.

  Args:
    p: probabilities (non-negative, summing to 1 along `axis`).
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include.

  Returns:
    The entropy of each row, the shape of `p` without `axis`.

  Examples:
    >>> import klax
    >>> float(klax.entropy_probs([0.5, 0.5]))  # log 2  # doctest: +ELLIPSIS
    0.6931...
  """
  (p,), axis = _checked_arrays({"p": p}, axis)
  valid = _valid_probabilities(p, "p", axis, where)
  return _nan_unless(valid, -jnp.sum(_p_log_q(p, p), axis=axis, where=where))


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
  (p, q), axis = _checked_arrays({"p": p, "q": q}, axis)
  valid = _valid_probabilities(p, "p", axis, where) & _valid_probabilities(q, "q", axis, where)
  return _nan_unless(valid, -jnp.sum(_p_log_q(p, q), axis=axis, where=where))


def _log_softmax_pair(arrays: dict, axis: int, where) -> tuple[list[jax.Array], int]:
  """Checks `arrays` (name -> logits) and returns their log-softmax along `axis`."""
  checked, axis = _checked_arrays(arrays, axis)
  return [jax.nn.log_softmax(x, axis=axis, where=where) for x in checked], axis


def prob_times(log_p: jax.Array, values: jax.Array) -> jax.Array:
  """Elementwise exp(log_p) · values, 0 where log_p = -inf, with finite gradients there."""
  possible = log_p > -jnp.inf
  safe_log_p = jnp.where(possible, log_p, 0.0)
  safe_values = jnp.where(possible, values, 0.0)
  return jnp.where(possible, jnp.exp(safe_log_p) * safe_values, 0.0)


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
    The KL of each row, the shape of `p_logits` without `axis`.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.kl_divergence_logits(jnp.log(jnp.array([0.5, 0.5])),
    ...                                 jnp.log(jnp.array([0.9, 0.1]))))  # doctest: +ELLIPSIS
    0.5108...
  """
  (p_logits, q_logits), axis = _checked_arrays({"p_logits": p_logits, "q_logits": q_logits}, axis)
  return kl_from_logits(p_logits, q_logits, axis, where)


def _shifted_exp(logits, axis: int, where):
  """e^{x − m} (0 where masked) and m = the row's largest logit (0 if not finite), kept dims."""
  top = jnp.max(logits, axis=axis, keepdims=True, where=where, initial=-jnp.inf)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  shifted = jnp.exp(logits - top)
  return (shifted if where is None else jnp.where(where, shifted, 0.0)), top


def _plain_kl_from_logits(p_logits, q_logits, axis: int, where) -> jax.Array:
  """KL = E_p[a − b] − LSE(a) + LSE(b) (a, b = p's and q's logits): two exponentials per outcome.

  With e = e^{a − max a}: E_p[a − b] = Σ e (a − b) / Σ e, and LSE(a) = max a + log Σ e. (Two
  log-softmaxes and p = exp(log p) would take three.) An outcome with p > 0 and q = 0 gives +∞.
  """
  e_a, top_a = _shifted_exp(p_logits, axis, where)
  e_b, top_b = _shifted_exp(q_logits, axis, where)
  possible = p_logits > -jnp.inf
  if where is not None:
    possible &= where
  d = jnp.where(possible, p_logits - q_logits, 0.0)
  terms = jnp.where(d == jnp.inf, jnp.inf, e_a * d)  # p > 0 even where e_a underflows.
  sum_a, sum_b = jnp.sum(e_a, axis=axis), jnp.sum(e_b, axis=axis)
  lse_difference = jnp.squeeze(top_b - top_a, axis) + jnp.log(sum_b) - jnp.log(sum_a)
  return jnp.sum(terms, axis=axis) / sum_a + lse_difference


def kl_from_logits(p_logits, q_logits, axis: int = -1, where=None) -> jax.Array:
  """Σ p (log p − log q) for checked logits, accurate when p ≈ q.

  The plain form (`_plain_kl_from_logits`) loses ulps of |log p| (about 1e-6 in float32 for a
  large vocabulary): too much when the KL itself is small. So when some row's plain value is
  below 1e-2, the rows whose logit differences d = p_logits − q_logits stay within 1 of their
  mean are recomputed cancellation-free: with t = d − E_p[d] (any constant shift of d leaves the
  KL unchanged), KL = E_p[t] + log E_p[e^{−t}] = A − (B − log1p(B)), A = E_p[t + expm1(−t)]
  (every term ≥ 0, by its Taylor series where |t| is small), B = E_p[expm1(−t)]: about 1e-6
  relative in float32 where the plain form can be off by 100%. On CPU a batch of more than 64
  rows (outcomes on the last axis, p and q of one shape) runs in blocks of rows, so that each
  block's temporaries stay in cache (`_CPU_BLOCK_ROWS`); the values are the same.
  """
  block = _block_size(p_logits.shape, axis) if p_logits.shape == q_logits.shape else None
  if block is None:
    return _kl_from_logits_whole(p_logits, q_logits, axis, where)
  return jax.lax.platform_dependent(
    cpu=lambda: _kl_from_logits_blocks(p_logits, q_logits, where, block),
    default=lambda: _kl_from_logits_whole(p_logits, q_logits, axis, where),
  )


def _kl_from_logits_whole(p_logits, q_logits, axis: int, where) -> jax.Array:
  """`kl_from_logits` for the whole batch at once: the plain form, refined where needed."""
  plain = _plain_kl_from_logits(p_logits, q_logits, axis, where)
  return jax.lax.cond(
    jnp.any(plain < 1e-2),
    lambda: _refined_rows(p_logits, q_logits, axis, where, plain),
    lambda: plain,
  )


# On CPU, batches of more than `_CPU_BLOCK_ROWS[-1]` rows (outcomes on the last axis) go through
# `kl_from_logits` in blocks of rows, the first of these sizes that divides the number of rows:
# XLA's CPU reductions do not fuse their elementwise inputs, so a whole batch's temporaries go
# through memory, while a block's stay in cache (1.6-1.75x faster at batch 256-4,096 x 32,000
# on a 2-core Xeon). Other platforms take the batch whole.
_CPU_BLOCK_ROWS = (32, 16, 8, 64)


def _block_size(shape, axis: int) -> int | None:
  """Rows per CPU block, or None to take the batch whole (small, or outcomes not last)."""
  if not shape or axis % len(shape) != len(shape) - 1:
    return None
  rows = math.prod(shape[:-1])
  if rows <= _CPU_BLOCK_ROWS[-1]:
    return None
  return next((size for size in _CPU_BLOCK_ROWS if rows % size == 0), None)


def _kl_from_logits_blocks(p_logits, q_logits, where, block: int) -> jax.Array:
  """`kl_from_logits` along the last axis as a `lax.map` over blocks of `block` rows (CPU)."""
  arrays = [p_logits, q_logits] + (
    [] if where is None else [jnp.broadcast_to(where, p_logits.shape)]
  )
  size = p_logits.shape[-1]
  blocks = [x.reshape(-1, block, size) for x in arrays]

  def one_block(arrays):
    block_where = None if where is None else arrays[2]
    return _kl_from_logits_whole(arrays[0], arrays[1], -1, block_where)

  return jax.lax.map(one_block, blocks).reshape(p_logits.shape[:-1])


def _refined_rows(p_logits, q_logits, axis: int, where, plain) -> jax.Array:
  """`kl_from_logits`'s cancellation-free form for the rows whose plain value is below 1e-2.

  The rows go in groups of `_REFINE_GROUP` (`lax.map` over groups, `vmap` within one), and a
  group is recomputed only if one of its rows needs it: the temporaries are a group's, not the
  batch's, so carrying this rarely taken branch costs the common path nothing.
  """
  where = (
    jnp.ones(p_logits.shape, bool) if where is None else jnp.broadcast_to(where, p_logits.shape)
  )
  rows = [jnp.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]) for x in (p_logits, q_logits, where)]
  rows.append(plain.reshape(-1))
  count = rows[-1].shape[0]
  padded = -(-count // _REFINE_GROUP) * _REFINE_GROUP
  rows = [jnp.concatenate([x, jnp.ones((padded - count, *x.shape[1:]), x.dtype)]) for x in rows]
  groups = [x.reshape(-1, _REFINE_GROUP, *x.shape[1:]) for x in rows]

  def group(arrays):
    plain = arrays[-1]
    return jax.lax.cond(jnp.any(plain < 1e-2), jax.vmap(_refined_row), lambda *_: plain, *arrays)

  return jax.lax.map(group, groups).reshape(-1)[:count].reshape(plain.shape)


_REFINE_GROUP = 16


def _refined_row(p_logits, q_logits, where, plain) -> jax.Array:
  log_p = jax.nn.log_softmax(p_logits, where=where)
  possible = (log_p > -jnp.inf) & where
  p = jnp.where(possible, jnp.exp(log_p), 0.0)

  def expect(values):  # E_p[values], 0 · anything = 0 where p = 0.
    return jnp.sum(p * jnp.where(possible, values, 0.0), where=where)

  d = jnp.where(possible, p_logits - q_logits, 0.0)
  t = d - expect(d)
  small = jnp.abs(t) < 1.0
  near = jnp.all(small | ~possible)
  t = jnp.where(small, t, 0.0)
  e = jnp.expm1(-t)
  a, b = expect(exp_remainder(t, e)), expect(e)
  return jnp.where(near, a - (b - jnp.log1p(b)), plain)


def entropy_logits(logits, axis: int = -1, *, where=None) -> jax.Array:
  """Shannon entropy (in nats) of the distribution softmax(logits) along `axis`.

  H(p) = -Σ_i p_i log p_i with log p = log_softmax(logits).

  Args:
    logits: unnormalised log-probabilities.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include (the others get probability 0).

  Returns:
    The entropy of each row, the shape of `logits` without `axis`.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.entropy_logits(jnp.zeros(4)))  # log 4  # doctest: +ELLIPSIS
    1.3862...
  """
  (log_p,), axis = _log_softmax_pair({"logits": logits}, axis, where)
  return -jnp.sum(prob_times(log_p, log_p), axis=axis, where=where)


def cross_entropy_logits(p_logits, q_logits, axis: int = -1, *, where=None) -> jax.Array:
  """Cross-entropy of softmax(q_logits) relative to softmax(p_logits) along `axis`.

  H(p, q) = -Σ_i p_i log q_i = H(p) + KL(p ‖ q).

  Args:
    p_logits: unnormalised log-probabilities of the distribution expectations are taken under.
    q_logits: unnormalised log-probabilities of q, same shape.
    axis: the axis that indexes outcomes.
    where: optional boolean mask of the outcomes to include (the others get probability 0).

  Returns:
    The cross-entropy of each row, the shape of `p_logits` without `axis`.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> float(klax.cross_entropy_logits(jnp.zeros(2), jnp.zeros(2)))  # log 2  # doctest: +ELLIPSIS
    0.6931...
  """
  (log_p, log_q), axis = _log_softmax_pair(
    {"p_logits": p_logits, "q_logits": q_logits}, axis, where
  )
  return -jnp.sum(prob_times(log_p, log_q), axis=axis, where=where)
