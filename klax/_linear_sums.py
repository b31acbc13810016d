"""Entropy, cross-entropy and the generalised JSD of linear heads: two passes over the vocabulary.

The first pass is an online log-sum-exp of each model's logits (`_linear_chunks.online_lse`);
with log p = a − LSE(a) and log q = b − LSE(b) known, the second sums, per token,

- entropy:        H(p) = −Σ p log p;                        ∂H/∂a = −p (log p + H),
- cross-entropy:  H(p, q) = −Σ p log q;                     ∂/∂a = −p (log q + H(p, q)), ∂/∂b = q − p,
- JSD(β):         β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q;
                  ∂/∂a = β p (log p − log m − KL(p ‖ m)), ∂/∂b = (1 − β) q (log q − log m − KL(q ‖ m)).

The backward pass recomputes each chunk's logits and applies these. Products with a probability
of 0 are 0 (`prob_times`); a row with a NaN or +∞ logit is NaN; p > 0 = q makes H(p, q) +∞.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from klax import _linear_chunks as chunks
from klax._logits import prob_times


def _log_probs(x, lse):
  return jnp.where(jnp.isfinite(x), x - lse[:, None], -jnp.inf)


def _terms(kind: str, beta: float, log_p, log_q):
  """The per-outcome terms of a chunk: (entropy) | (cross-entropy) | (KL(p‖m), KL(q‖m))."""
  if kind == "entropy":
    return (-prob_times(log_p, log_p),)
  if kind == "cross_entropy":
    return (-prob_times(log_p, log_q),)
  log_m = jnp.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
  return prob_times(log_p, log_p - log_m), prob_times(log_q, log_q - log_m)


def _lse(state):
  m, s, bad = state
  return chunks.reference(m) + jnp.log(jnp.where(s == 0, 1.0, s)), s == 0, bad


def _forward(kind, beta, config, p, q):
  """(value, lse_a, lse_b, parts) per token, chunk of tokens by chunk of tokens."""
  n, vocab, dtype = p.hidden.shape[0], p.weight.shape[1], p.hidden.dtype
  two = kind != "entropy"
  outputs = tuple(jnp.zeros((n,), dtype) for _ in range(5))

  def body(start, fresh, outputs):
    hiddens = [chunks.rows(h.hidden, start, config) for h in (p, q)[: 1 + two]]
    size = hiddens[0].shape[0]

    def first(v_start, v_fresh, states):
      return tuple(
        chunks.online_lse(state, chunks.logits(h, head, v_start, v_fresh, config))
        for state, h, head in zip(states, hiddens, (p, q), strict=False)
      )

    init = tuple(chunks.lse_init(size, dtype) for _ in hiddens)
    lses = [_lse(state) for state in chunks.over_vocab(vocab, config, first, init)]
    lse = [x[0] for x in lses]

    def second(v_start, v_fresh, sums):
      logs = [
        _log_probs(chunks.logits(h, head, v_start, v_fresh, config), s)
        for h, head, s in zip(hiddens, (p, q), lse, strict=False)
      ]
      terms = _terms(kind, beta, logs[0], logs[-1])
      return tuple(total + jnp.sum(t, axis=-1) for total, t in zip(sums, terms, strict=True))

    sums = chunks.over_vocab(
      vocab, config, second, (jnp.zeros((size,), dtype),) * (1 + (kind == "jsd"))
    )
    bad = functools.reduce(jnp.logical_or, [x[2] for x in lses])
    if kind == "jsd":
      value = beta * sums[0] + (1 - beta) * sums[1]
    else:
      value = sums[0]
      if two:  # p > 0 and q has no outcome at all.
        value = jnp.where(lses[1][1] & ~lses[0][1], jnp.inf, value)
    value = jnp.where(bad, jnp.nan, value)
    new = (value, lse[0], lse[-1], sums[0], sums[-1])
    return tuple(chunks.put_rows(x, start, fresh, y) for x, y in zip(outputs, new, strict=True))

  return chunks.over_tokens(n, config, body, outputs)


def _cotangents(kind, beta, log_p, log_q, g, value, part_p, part_q):
  """Cotangents g · ∂value/∂a and g · ∂value/∂b for one chunk (0 where g = 0 or the probability is 0)."""
  g = g[:, None]
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  if kind == "entropy":
    return (jnp.where(g != 0, -g * prob_times(log_p, log_p + value[:, None]), 0.0),)
  if kind == "cross_entropy":
    d_a = -g * prob_times(log_p, log_q + value[:, None])
    return jnp.where(g != 0, d_a, 0.0), jnp.where(g != 0, g * (q - p), 0.0)
  log_m = jnp.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
  d_a = beta * g * prob_times(log_p, log_p - log_m - part_p[:, None])
  d_b = (1 - beta) * g * prob_times(log_q, log_q - log_m - part_q[:, None])
  return jnp.where(g != 0, d_a, 0.0), jnp.where(g != 0, d_b, 0.0)


def _backward(kind, beta, config, residuals, g):
  heads, value, lse_a, lse_b, part_p, part_q = residuals
  n, vocab = heads[0].hidden.shape[0], heads[0].weight.shape[1]
  g = jnp.where(jnp.isfinite(value), g, 0.0)
  grads = tuple((jnp.zeros_like(h.weight), jnp.zeros_like(h.bias)) for h in heads)
  hiddens = tuple(jnp.zeros_like(h.hidden) for h in heads)

  def token_body(start, fresh, carry):
    hiddens, grads = carry
    part = [chunks.rows(x, start, config) for x in (g, value, part_p, part_q)]
    part[0] = jnp.where(fresh, part[0], 0.0)
    lse = [chunks.rows(x, start, config) for x in (lse_a, lse_b)]
    rows = [chunks.rows(h.hidden, start, config) for h in heads]

    def vocab_body(v_start, v_fresh, carry):
      d_hidden, grads = carry
      logs = [
        _log_probs(chunks.logits(h, head, v_start, v_fresh, config), s)
        for h, head, s in zip(rows, heads, lse, strict=False)
      ]
      d_logits = _cotangents(kind, beta, logs[0], logs[-1], *part)
      new = [
        chunks.backprop(head, h, v_start, v_fresh, d, dh, gr, config)
        for head, h, d, dh, gr in zip(heads, rows, d_logits, d_hidden, grads, strict=True)
      ]
      return tuple(x[0] for x in new), tuple(x[1] for x in new)

    init = tuple(jnp.zeros_like(h) for h in rows), grads
    d_hidden, grads = chunks.over_vocab(vocab, config, vocab_body, init)
    hiddens = tuple(
      chunks.put_rows(x, start, fresh, y) for x, y in zip(hiddens, d_hidden, strict=True)
    )
    return hiddens, grads

  hiddens, grads = chunks.over_tokens(n, config, token_body, (hiddens, grads))
  return (tuple(chunks.Head(h, *gr) for h, gr in zip(hiddens, grads, strict=True)),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def linear_sum(kind: str, beta: float, config: chunks.Config, heads: tuple) -> jax.Array:
  """Per-token entropy (heads = (p,)), cross-entropy or JSD(β) (heads = (p, q))."""
  return _forward(kind, beta, config, heads[0], heads[-1])[0]


def _linear_sum_fwd(kind, beta, config, heads):
  value, lse_a, lse_b, part_p, part_q = _forward(kind, beta, config, heads[0], heads[-1])
  return value, (heads, value, lse_a, lse_b, part_p, part_q)


linear_sum.defvjp(_linear_sum_fwd, _backward)
