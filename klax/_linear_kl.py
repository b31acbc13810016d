"""Per-token KL(p ‖ q) of two linear heads, in chunks, with a backward pass that recomputes them.

With a, b = p's and q's logits of one token, r_a, r_b their running maxima and
s_a = Σ e^(a − r_a), s_b likewise, one pass over the vocabulary accumulates

    u = Σ e^(a − r_a) ((a − r_a) − (b − r_b)),   KL = u / s_a − log s_a + log s_b,

rescaling s and u whenever a maximum grows (u also shifts by the change in r_b − r_a times s_a).
The logits enter only through their differences from the running maxima, so the value is blind
to a constant added to either model's logits, as `klax.kl_divergence_logits` is. Where a token's
value is below 1e-2, its chunk of tokens is recomputed in `kl_from_logits`'s cancellation-free
form (a second pass, needing log p and E_p[t] from the first): with d = a − b split exactly into
hi + lo (TwoSum), c = hi at p's most likely outcome and t = (hi − c) + lo − E_p[(hi − c) + lo],

    KL = A − (B − log1p B) − log1p(−(1 − Q_S)),   A = E_p[t + expm1(−t)],   B = E_p[expm1(−t)].

The gradients, from log p − log q − KL = t: ∂KL/∂a = p t and ∂KL/∂b = q − p = p expm1(−t − KL)
(the latter where |t + KL| < 1/2, else q − p directly), chunk by chunk again, so that they too
are exact when p ≈ q; the backward pass first recomputes E_p[(hi − c) + lo] of the very t it
uses (one more pass over the vocabulary), so that E_p[t] = 0 to rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from klax import _linear_chunks as chunks
from klax._logits import REFINE_BELOW
from klax._series import exp_remainder
from klax._series import log1p_remainder


def _two_sum_t(a, b, c, mean):
  """The shifted difference t = (hi − c) + lo − mean with hi + lo = a − b exactly; 0 where p = 0."""
  possible = jnp.isfinite(a) & jnp.isfinite(b)
  a, b = jnp.where(possible, a, 0.0), jnp.where(possible, b, 0.0)
  hi = a - b
  rounded = hi - a
  lo = (a - (hi - rounded)) - (b + rounded)
  return jnp.where(possible, ((hi - c[:, None]) + lo) - mean[:, None], 0.0)


def _first_step(state, a, b):
  """One chunk of the first pass: online maxima, sums, u, c and the row's edge flags."""
  m_a, s_a, m_b, s_b, u, c, bad, infinite = state
  finite_a, finite_b = jnp.isfinite(a), jnp.isfinite(b)
  bad = bad | chunks.undefined(a) | chunks.undefined(b)
  infinite = infinite | jnp.any(finite_a & (b == -jnp.inf), axis=-1)  # p > 0 = q.
  top_a = chunks.finite_max(a)
  new_a, new_b = jnp.maximum(m_a, top_a), jnp.maximum(m_b, chunks.finite_max(b))
  ra, rb = chunks.reference(new_a), chunks.reference(new_b)
  scale_a = jnp.where(m_a == -jnp.inf, 0.0, jnp.exp(chunks.reference(m_a) - ra))
  scale_b = jnp.where(m_b == -jnp.inf, 0.0, jnp.exp(chunks.reference(m_b) - rb))
  e_a = jnp.exp(jnp.where(finite_a, a - ra[:, None], -jnp.inf))
  e_b = jnp.exp(jnp.where(finite_b, b - rb[:, None], -jnp.inf))
  both = finite_a & finite_b
  d = jnp.where(both, (a - ra[:, None]) - (b - rb[:, None]), 0.0)
  shift = (rb - chunks.reference(m_b)) - (ra - chunks.reference(m_a))
  carried = jnp.where(s_a > 0, u + shift * s_a, 0.0)
  u = jnp.where(scale_a > 0, scale_a * carried, 0.0) + jnp.sum(e_a * d, axis=-1)
  at = jnp.argmax(jnp.where(finite_a, a, -jnp.inf), axis=-1)[:, None]
  top_d = jnp.take_along_axis(a, at, -1)[:, 0] - jnp.take_along_axis(b, at, -1)[:, 0]
  c = jnp.where(top_a > m_a, top_d, c)
  s_a = s_a * scale_a + jnp.sum(e_a, axis=-1)
  s_b = s_b * scale_b + jnp.sum(e_b, axis=-1)
  return new_a, s_a, new_b, s_b, u, c, bad, infinite


def _first_pass(p_hidden, q_hidden, p, q, config, vocab):
  """The plain KL of a token chunk and what the refinement and the gradient need."""
  n, dtype = p_hidden.shape[0], p_hidden.dtype
  zeros, none = jnp.zeros((n,), dtype), jnp.full((n,), -jnp.inf, dtype)
  init = (none, zeros, none, zeros, zeros, zeros, zeros < 0, zeros < 0)

  def body(start, fresh, state):
    a = chunks.logits(p_hidden, p, start, fresh, config)
    b = chunks.logits(q_hidden, q, start, fresh, config)
    return _first_step(state, a, b)

  m_a, s_a, m_b, s_b, u, c, bad, infinite = chunks.over_vocab(vocab, config, body, init)
  ra, rb = chunks.reference(m_a), chunks.reference(m_b)
  p_empty, q_empty = s_a == 0, s_b == 0
  safe_a = jnp.where(p_empty, 1.0, s_a)
  safe_b = jnp.where(p_empty | q_empty, 1.0, s_b)
  plain = u / safe_a - jnp.log(safe_a) + jnp.log(safe_b)
  edge = jnp.where(bad, jnp.nan, jnp.where(p_empty, 0.0, jnp.inf))
  plain = jnp.where(bad | p_empty | q_empty | infinite, edge, plain)
  mean = u / safe_a + ((ra - rb) - c)  # E_p[(hi − c) + lo].
  usable = (plain < REFINE_BELOW) & ~p_empty  # Finite, p and q not empty.
  return (plain, ra + jnp.log(safe_a), rb + jnp.log(safe_b), c, mean), usable


def _refine(p_hidden, q_hidden, p, q, config, vocab, usable, plain, lse_a, lse_b, c, mean):
  """The cancellation-free KL of the `usable` rows (plain value below 1e-2); others `plain`."""
  zeros = jnp.zeros_like(plain)

  def body(start, fresh, state):
    big_a, big_b, q_outside = state
    a = chunks.logits(p_hidden, p, start, fresh, config)
    b = chunks.logits(q_hidden, q, start, fresh, config)
    possible = jnp.isfinite(a)
    log_p = jnp.where(possible, a - lse_a[:, None], -jnp.inf)
    prob = jnp.exp(log_p)
    t = _two_sum_t(a, b, c, mean)
    steep = possible & (t < -60.0)
    flat = possible & ~steep
    flat_t = jnp.where(flat, t, 0.0)
    e = jnp.expm1(-flat_t)
    p_exp = jnp.exp(jnp.where(steep, log_p - t, -jnp.inf))  # p e^{−t} where t < −60.
    steep_p = jnp.where(steep, prob, 0.0)
    big_a += jnp.sum(
      jnp.where(flat, prob * exp_remainder(flat_t, e), 0.0)
      + p_exp
      + steep_p * (jnp.where(steep, t, 0.0) - 1.0),
      axis=-1,
    )
    big_b += jnp.sum(jnp.where(flat, prob * e, 0.0) + p_exp - steep_p, axis=-1)
    q_rest = jnp.exp(jnp.where(possible | ~jnp.isfinite(b), -jnp.inf, b - lse_b[:, None]))
    return big_a, big_b, q_outside + jnp.sum(q_rest, axis=-1)

  big_a, big_b, q_outside = chunks.over_vocab(vocab, config, body, (zeros, zeros, zeros))
  refined = jnp.maximum(big_a - log1p_remainder(big_b), 0.0) - jnp.log1p(-q_outside)
  return jnp.where(usable, refined, plain)


def _forward(config, p, q):
  """Per-token KL and its residuals over all tokens, one token chunk at a time."""
  n, vocab = p.hidden.shape[0], p.weight.shape[1]
  dtype = p.hidden.dtype
  outputs = tuple(jnp.zeros((n,), dtype) for _ in range(5))

  def body(start, fresh, outputs):
    p_hidden = chunks.rows(p.hidden, start, config)
    q_hidden = chunks.rows(q.hidden, start, config)
    first, usable = _first_pass(p_hidden, q_hidden, p, q, config, vocab)
    kl = jax.lax.cond(
      jnp.any(fresh & usable),
      lambda: _refine(p_hidden, q_hidden, p, q, config, vocab, usable, *first),
      lambda: first[0],
    )
    new = (kl, *first[1:])
    return tuple(chunks.put_rows(x, start, fresh, y) for x, y in zip(outputs, new, strict=True))

  return chunks.over_tokens(n, config, body, outputs)


def _logit_cotangents(a, b, g, kl, lse_a, lse_b, c, mean):
  """Cotangents g · ∂KL/∂a = g p t and g · ∂KL/∂b = g (q − p) for one chunk (0 where g = 0)."""
  possible = jnp.isfinite(a)
  log_p = jnp.where(possible, a - lse_a[:, None], -jnp.inf)
  prob = jnp.exp(log_p)
  t = _two_sum_t(a, b, c, mean)
  log_ratio = jnp.where(possible, -t - kl[:, None], 0.0)  # log q − log p.
  near = possible & (jnp.abs(log_ratio) < 0.5)
  q_minus_p = jnp.where(
    near,
    prob * jnp.expm1(jnp.where(near, log_ratio, 0.0)),
    jnp.exp(jnp.where(jnp.isfinite(b), b - lse_b[:, None], -jnp.inf)) - prob,
  )
  live = g[:, None] != 0
  d_a = jnp.where(live & possible, g[:, None] * prob * t, 0.0)
  return d_a, jnp.where(live, g[:, None] * q_minus_p, 0.0)


def _backward(config, residuals, g):
  p, q, kl, lse_a, lse_b, c, mean = residuals
  n, vocab = p.hidden.shape[0], p.weight.shape[1]
  g = jnp.where(jnp.isfinite(kl), g, 0.0)
  grads = tuple((jnp.zeros_like(h.weight), jnp.zeros_like(h.bias)) for h in (p, q))
  hiddens = (jnp.zeros_like(p.hidden), jnp.zeros_like(q.hidden))

  def token_body(start, fresh, carry):
    hiddens, grads = carry
    part = [chunks.rows(x, start, config) for x in (g, kl, lse_a, lse_b, c, mean)]
    part[0] = jnp.where(fresh, part[0], 0.0)
    p_hidden = chunks.rows(p.hidden, start, config)
    q_hidden = chunks.rows(q.hidden, start, config)

    def mean_body(v_start, v_fresh, sums):  # E_p[(hi − c) + lo] of the same t as below.
      a = chunks.logits(p_hidden, p, v_start, v_fresh, config)
      b = chunks.logits(q_hidden, q, v_start, v_fresh, config)
      prob = jnp.exp(jnp.where(jnp.isfinite(a), a - part[2][:, None], -jnp.inf))
      t0 = _two_sum_t(a, b, part[4], jnp.zeros_like(part[4]))
      return sums[0] + jnp.sum(prob * t0, axis=-1), sums[1] + jnp.sum(prob, axis=-1)

    zeros = jnp.zeros_like(part[0])
    total, mass = chunks.over_vocab(vocab, config, mean_body, (zeros, zeros))
    part[5] = jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0), part[5])

    def vocab_body(v_start, v_fresh, carry):
      d_hidden, grads = carry
      a = chunks.logits(p_hidden, p, v_start, v_fresh, config)
      b = chunks.logits(q_hidden, q, v_start, v_fresh, config)
      d_a, d_b = _logit_cotangents(a, b, *part)
      d_p, grads_p = chunks.backprop(
        p, p_hidden, v_start, v_fresh, d_a, d_hidden[0], grads[0], config
      )
      d_q, grads_q = chunks.backprop(
        q, q_hidden, v_start, v_fresh, d_b, d_hidden[1], grads[1], config
      )
      return (d_p, d_q), (grads_p, grads_q)

    init = (jnp.zeros_like(p_hidden), jnp.zeros_like(q_hidden)), grads
    d_hidden, grads = chunks.over_vocab(vocab, config, vocab_body, init)
    hiddens = tuple(
      chunks.put_rows(x, start, fresh, y) for x, y in zip(hiddens, d_hidden, strict=True)
    )
    return hiddens, grads

  hiddens, grads = chunks.over_tokens(n, config, token_body, (hiddens, grads))
  return (
    chunks.Head(hiddens[0], *grads[0]),
    chunks.Head(hiddens[1], *grads[1]),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def linear_kl(config: chunks.Config, p: chunks.Head, q: chunks.Head) -> jax.Array:
  """Per-token KL(p ‖ q) of heads `p` and `q` ([N]); chunks and temperature from `config`."""
  return _forward(config, p, q)[0]


def _linear_kl_fwd(config, p, q):
  kl, *rest = _forward(config, p, q)
  return kl, (p, q, kl, *rest)


linear_kl.defvjp(_linear_kl_fwd, _backward)
