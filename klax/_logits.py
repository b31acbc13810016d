"""The KL divergence between two softmax distributions, exact when p ≈ q, and its edge values.

`kl_from_logits` is the engine behind `klax.kl_divergence_logits` and the Categorical, Bernoulli,
Binomial and Multinomial closed forms; `prob_times` and `log_softmax_rows` are the pieces of the
entropy, cross-entropy and grid sums. Logits here are already checked (floats, one dtype) and
masked: an outcome outside a `where` mask has the logit −∞ in both p and q (`mask_logits`).

Edge values, the same in every function of `klax._discrete`, in this order:
- NaN anywhere in a row of p or q (a NaN logit, or +∞, for which softmax is undefined) makes the
  row NaN.
- A row in which p has no outcome of positive probability (every logit −∞ or masked out) is an
  empty sum: 0, with zero gradients (what a padding mask needs).
- A row in which q has no outcome of positive probability, and p has one, is +∞.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from klax._series import exp_remainder
from klax._series import log1p_remainder


def mask_logits(logits: jax.Array, where) -> jax.Array:
  """`logits` with the outcomes outside `where` set to −∞ (probability 0 in any softmax)."""
  return logits if where is None else jnp.where(where, logits, -jnp.inf)


def prob_times(log_p: jax.Array, values: jax.Array) -> jax.Array:
  """Elementwise exp(log_p) · values: 0 where log_p = −inf, ±inf where values are (p > 0).

  NaN in log_p, or in values where p > 0, gives NaN (values are not looked at where p = 0). Gradients are finite wherever the value is.
  """
  possible = log_p != -jnp.inf
  infinite = possible & jnp.isinf(values)
  safe_log_p = jnp.where(possible, log_p, 0.0)
  safe_values = jnp.where(possible & ~infinite, values, 0.0)
  return jnp.where(infinite, values, jnp.where(possible, jnp.exp(safe_log_p) * safe_values, 0.0))


def log_softmax_rows(masked_logits: list, axis: int) -> tuple[list, list, jax.Array]:
  """log_softmax of each array of masked logits, its empty rows, and the undefined rows.

  A row is empty where every logit is −inf, undefined where any array has NaN or +inf. An empty row's logits are replaced by zeros first, so that it has finite gradients (zero, once
  the caller selects its value).
  """
  log_softmaxes, empties, undefined = [], [], False
  for logits in masked_logits:
    empty = jnp.all(logits == -jnp.inf, axis=axis, keepdims=True)
    log_softmaxes.append(_log_softmax(jnp.where(empty, 0.0, logits), axis))
    empties.append(jnp.squeeze(empty, axis))
    undefined = undefined | jnp.any(jnp.isnan(logits) | (logits == jnp.inf), axis=axis)
  return log_softmaxes, empties, undefined


def _log_softmax(logits: jax.Array, axis: int) -> jax.Array:
  """log_softmax as z − z_top − log1p(Σ_{i ≠ top} e^{z_i − z_top}), z = logits − max (held).

  The usual form, z − log Σ e^z, rounds log p_top to 0 once the other outcomes' mass is below
  ε (log(1 + 2e-9) = 0 in float32), which drops the term −p_top log p_top ≈ Σ_{i≠top} p_i from
  an entropy near 0 (5% of the entropy of logits (0, −20)); log1p keeps it.
  """
  z = _centred(logits, axis)
  top = jnp.argmax(z, axis=axis, keepdims=True)
  is_top = jax.lax.broadcasted_iota(top.dtype, z.shape, axis % z.ndim) == top
  z_top = jnp.sum(jnp.where(is_top, z, 0.0), axis=axis, keepdims=True)
  rest = jnp.sum(jnp.where(is_top, 0.0, jnp.exp(z - z_top)), axis=axis, keepdims=True)
  return z - z_top - jnp.log1p(rest)


def _centred(logits: jax.Array, axis: int) -> jax.Array:
  """The logits less m, the row's largest logit (0 if not finite), m held constant under `grad`.

  The KL depends on logits only up to a constant per row; centring first keeps the differences
  of p's and q's logits exact however large the constants are (logits of 1e5 or 3e38 included:
  an x − m that overflows is −∞, a probability that is 0 in floating point anyway).
  """
  top = jnp.max(logits, axis=axis, keepdims=True)
  return logits - jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))


def _plain_kl_from_logits(p_logits, q_logits, axis: int) -> jax.Array:
  """KL = E_p[a − b] − LSE(a) + LSE(b) (a, b = p's and q's centred logits): two exponentials each.

  With a and b centred (max 0), E_p[a − b] = Σ e^a (a − b) / Σ e^a and LSE = log Σ e^x; Σ e^x
  is 0 exactly when every logit is −∞, at least 1 when one is finite, +∞ or NaN when one is +∞
  or NaN: the empty and undefined rows are read off it. An outcome with p > 0 and q = 0 gives
  +∞ (even where e^a underflows); an empty p gives 0, an empty q (p not empty) +∞.
  """
  a, b = _centred(p_logits, axis), _centred(q_logits, axis)
  e_a, e_b = jnp.exp(a), jnp.exp(b)
  possible = a != -jnp.inf  # NaN counts as possible, so that it reaches the sum.
  d = jnp.where(possible, a - b, 0.0)
  infinite = d == jnp.inf
  terms = jnp.where(infinite, jnp.inf, e_a * jnp.where(infinite, 0.0, d))
  sum_a, sum_b = jnp.sum(e_a, axis=axis), jnp.sum(e_b, axis=axis)
  undefined = ~(jnp.isfinite(sum_a) & jnp.isfinite(sum_b))  # NaN or +inf in the row.
  p_empty, q_empty = sum_a == 0, sum_b == 0
  sum_a = jnp.where(p_empty, 1.0, sum_a)  # Safe values: no 0/0 in the untaken branches.
  sum_b = jnp.where(p_empty | q_empty, 1.0, sum_b)
  kl = jnp.sum(terms, axis=axis) / sum_a + jnp.log(sum_b) - jnp.log(sum_a)
  edge = jnp.where(undefined, jnp.nan, jnp.where(p_empty, 0.0, jnp.inf))
  return jnp.where(undefined | p_empty | q_empty, edge, kl)


@functools.partial(jax.jit, static_argnames=("axis",))
def kl_from_logits(p_logits, q_logits, axis: int = -1, where=None) -> jax.Array:
  """Σ p (log p − log q) for checked logits (broadcast against each other), accurate when p ≈ q.

  The plain form (`_plain_kl_from_logits`) loses ulps of |log p| (about 1e-6 in float32 for a
  large vocabulary): too much when the KL itself is small. So when some row's plain value is
  below 1e-2, those rows are recomputed cancellation-free: with d = p_logits − q_logits,
  t = d − E_p[d] (a constant shift of d leaves the KL unchanged) and Q_S = q(S), the mass of q
  on p's support S,

      KL = E_p[t] + log E_p[e^{−t}] − log Q_S = A − (B − log1p(B)) − log1p(−(1 − Q_S)),

  A = E_p[t + expm1(−t)] (every term ≥ 0, by its Taylor series where |t| is small),
  B = E_p[expm1(−t)]: about 1e-6 relative in float32 where the plain form can be off by 100%.
  On CPU a batch of more than 64 rows (outcomes on the last axis) runs in blocks of rows, so that
  each block's temporaries stay in cache (`_CPU_BLOCK_ROWS`); the values are the same. Compiled
  at its entry (once per shape, dtype and axis), so eager calls do not trace its control flow
  again.
  """
  p_logits, q_logits = jnp.broadcast_arrays(
    mask_logits(p_logits, where), mask_logits(q_logits, where)
  )
  block = _block_size(p_logits.shape, axis)
  if block is None:
    return _kl_from_logits_whole(p_logits, q_logits, axis)
  return jax.lax.platform_dependent(
    cpu=lambda: _kl_from_logits_blocks(p_logits, q_logits, block),
    default=lambda: _kl_from_logits_whole(p_logits, q_logits, axis),
  )


def _kl_from_logits_whole(p_logits, q_logits, axis: int) -> jax.Array:
  """`kl_from_logits` for the whole batch at once: the plain form, refined where needed."""
  plain = _plain_kl_from_logits(p_logits, q_logits, axis)
  return jax.lax.cond(
    jnp.any(plain < REFINE_BELOW),
    lambda: _refined_rows(p_logits, q_logits, axis, plain),
    lambda: plain,
  )


# On CPU, batches of more than `_CPU_BLOCK_ROWS[-1]` rows (outcomes on the last axis) go through
# `kl_from_logits` in blocks of rows, the first of these sizes that divides the number of rows:
# XLA's CPU reductions do not fuse their elementwise inputs, so a whole batch's temporaries go
# through memory, while a block's stay in cache. Other platforms take the batch whole.
_CPU_BLOCK_ROWS = (32, 16, 8, 64)


def _block_size(shape, axis: int) -> int | None:
  """Rows per CPU block, or None to take the batch whole (small, or outcomes not last)."""
  if not shape or axis % len(shape) != len(shape) - 1:
    return None
  rows = math.prod(shape[:-1])
  if rows <= _CPU_BLOCK_ROWS[-1]:
    return None
  return next((size for size in _CPU_BLOCK_ROWS if rows % size == 0), None)


def _kl_from_logits_blocks(p_logits, q_logits, block: int) -> jax.Array:
  """`kl_from_logits` along the last axis as a `lax.map` over blocks of `block` rows (CPU)."""
  size = p_logits.shape[-1]
  blocks = [x.reshape(-1, block, size) for x in (p_logits, q_logits)]
  return jax.lax.map(lambda b: _kl_from_logits_whole(*b, -1), blocks).reshape(p_logits.shape[:-1])


def _refined_rows(p_logits, q_logits, axis: int, plain) -> jax.Array:
  """`kl_from_logits`'s cancellation-free form for the rows whose plain value is below 1e-2.

  The rows go in groups of `_REFINE_GROUP` (`lax.map` over groups, `vmap` within one), and a
  group is recomputed only if one of its rows needs it: the temporaries are a group's, not the
  batch's, so carrying this rarely taken branch costs the common path nothing.
  """
  rows = [jnp.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]) for x in (p_logits, q_logits)]
  rows.append(plain.reshape(-1))
  count = rows[-1].shape[0]
  padded = -(-count // _REFINE_GROUP) * _REFINE_GROUP
  rows = [jnp.concatenate([x, jnp.ones((padded - count, *x.shape[1:]), x.dtype)]) for x in rows]
  groups = [x.reshape(-1, _REFINE_GROUP, *x.shape[1:]) for x in rows]

  def group(arrays):
    plain = arrays[-1]
    return jax.lax.cond(
      jnp.any(plain < REFINE_BELOW), jax.vmap(_refined_row), lambda *_: plain, *arrays
    )

  return jax.lax.map(group, groups).reshape(-1)[:count].reshape(plain.shape)


_REFINE_GROUP = 16
REFINE_BELOW = 1e-2  # Rows whose plain KL is below this are recomputed cancellation-free.


def _refined_row(p_logits, q_logits, plain) -> jax.Array:
  """The cancellation-free KL of one row, or `plain` where it does not apply.

  It applies to rows with a plain value below 1e-2 (NaN excluded) in which p and q both have an
  outcome. There KL_S = log E_p[e^{−t}] = log1p(B) ≤ KL < 1e-2, so B and every p_i e^{−t_i} are
  small: the form has no cancellation whatever the size of t. Where t_i < −60, p_i e^{−t_i} is
  taken as exp(log p_i − t_i) (p_i itself underflows there). Rows it does not apply to are
  replaced by zeros before any arithmetic, so that the untaken branch has finite gradients.
  """
  usable = (plain < REFINE_BELOW) & jnp.any(p_logits != -jnp.inf) & jnp.any(q_logits != -jnp.inf)
  p_logits = jnp.where(usable, p_logits, 0.0)
  q_logits = jnp.where(usable, q_logits, 0.0)
  possible = p_logits != -jnp.inf
  log_p = jax.nn.log_softmax(p_logits)
  p = jnp.where(possible, jnp.exp(log_p), 0.0)

  def expect(values):  # E_p[values], 0 · anything = 0 where p = 0.
    return jnp.sum(p * jnp.where(possible, values, 0.0))

  # d = a − b as hi + lo exactly (TwoSum), then t = (hi − c) + lo − E_p[·] with c = hi at p's
  # most likely outcome: hi − c is exact when the d are close to each other, so t keeps its low
  # bits under a constant shift of either side as large as the logits allow, and is exact for
  # a ≈ b (a constant c leaves the KL unchanged).
  a, b = jnp.where(possible, p_logits, 0.0), jnp.where(possible, q_logits, 0.0)
  hi = a - b
  rounded = hi - a
  lo = (a - (hi - rounded)) - (b + rounded)
  t = (hi - hi[jnp.argmax(jnp.where(possible, p_logits, -jnp.inf))]) + lo
  t = t - expect(t)
  steep = possible & (t < -60.0)
  flat_t = jnp.where(steep, 0.0, t)
  e = jnp.expm1(-flat_t)
  p_exp = jnp.exp(jnp.where(steep, log_p - t, -jnp.inf))  # p e^{−t} where t < −60, else 0.
  steep_p = jnp.where(steep, p, 0.0)
  a = expect(jnp.where(steep, 0.0, exp_remainder(flat_t, e))) + jnp.sum(
    p_exp + steep_p * (jnp.where(steep, t, 0.0) - 1.0)
  )
  b = expect(jnp.where(steep, 0.0, e)) + jnp.sum(p_exp - steep_p)
  # 1 − Q_S: q's mass where p = 0 (small here, since KL ≥ −log Q_S and the plain KL < 1e-2).
  q_outside = jnp.sum(jnp.where(possible, 0.0, jnp.exp(jax.nn.log_softmax(q_logits))))
  refined = jnp.maximum(a - log1p_remainder(b), 0.0) - jnp.log1p(-q_outside)
  return jnp.where(usable, refined, plain)
