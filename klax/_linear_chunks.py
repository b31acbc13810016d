"""Chunks of tokens and vocabulary for the linear-head divergences (`klax._linear`).

A model's logits are `(hidden @ weight + bias) / temperature`, hidden [N, D], weight [D, V],
bias [V] (−∞ for a masked-out outcome). They are only ever formed one chunk at a time,
[token_chunk, vocab_chunk], inside `lax.fori_loop`s. The last chunk of each axis is moved back so
that it ends at N (or V) and never reads past the end; the rows (columns) it shares with the chunk
before are marked not `fresh`: their logits are set to −∞ (outcomes) or their results discarded
(tokens), so that nothing is counted twice and no input is padded or copied.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Head(NamedTuple):
  """One model's output layer: logits = (hidden @ weight + bias) / temperature."""

  hidden: jax.Array  # [N, D]
  weight: jax.Array  # [D, V]
  bias: jax.Array  # [V]


class Config(NamedTuple):
  """Static sizes: tokens and outcomes per chunk, and the temperature."""

  token_chunk: int
  vocab_chunk: int
  temperature: float


def fit_config(config: Config, n: int, v: int) -> Config:
  """`config` with chunks no larger than the arrays they cut."""
  return config._replace(
    token_chunk=min(config.token_chunk, n), vocab_chunk=min(config.vocab_chunk, v)
  )


def _chunks(i, size: int, total: int):
  """Start of chunk i (moved back to end at `total`) and which of its entries are new."""
  start = jnp.minimum(i * size, total - size)
  return start, start + jnp.arange(size) >= i * size


def over_tokens(n: int, config: Config, body, init):
  """Runs `carry = body(start, fresh, carry)` for each chunk of tokens (rows start…start+size)."""
  size = config.token_chunk
  return jax.lax.fori_loop(0, -(-n // size), lambda i, c: body(*_chunks(i, size, n), c), init)


def over_vocab(v: int, config: Config, body, init):
  """Runs `carry = body(start, fresh, carry)` for each chunk of outcomes."""
  size = config.vocab_chunk
  return jax.lax.fori_loop(0, -(-v // size), lambda j, c: body(*_chunks(j, size, v), c), init)


def rows(x: jax.Array, start, config: Config) -> jax.Array:
  """The rows of `x` (tokens on axis 0) of the token chunk at `start`."""
  return jax.lax.dynamic_slice_in_dim(x, start, config.token_chunk, 0)


def put_rows(x: jax.Array, start, fresh, new: jax.Array) -> jax.Array:
  """`x` with the fresh rows of the chunk at `start` replaced by `new`'s."""
  old = jax.lax.dynamic_slice_in_dim(x, start, new.shape[0], 0)
  fresh = fresh.reshape(fresh.shape + (1,) * (new.ndim - 1))
  return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(fresh, new, old), start, 0)


def logits(hidden: jax.Array, head: Head, start, fresh, config: Config) -> jax.Array:
  """[token_chunk, vocab_chunk] logits of `hidden` (rows of the chunk) for the outcomes at `start`.

  Outcomes that are not fresh get −∞: probability 0, so they take no part in any sum.
  """
  size = config.vocab_chunk
  weight = jax.lax.dynamic_slice_in_dim(head.weight, start, size, 1)
  bias = jax.lax.dynamic_slice_in_dim(head.bias, start, size, 0)
  x = jnp.dot(hidden, weight) + bias
  if config.temperature != 1.0:
    x = x / config.temperature
  return jnp.where(fresh, x, -jnp.inf)


def add_columns(x: jax.Array, start, update: jax.Array) -> jax.Array:
  """`x` ([..., V]) with `update` ([..., vocab_chunk]) added to the columns at `start`."""
  axis = x.ndim - 1
  old = jax.lax.dynamic_slice_in_dim(x, start, update.shape[-1], axis)
  return jax.lax.dynamic_update_slice_in_dim(x, old + update, start, axis)


def backprop(head: Head, hidden, start, fresh, d_logits, d_hidden, grads, config: Config):
  """Adds one chunk's logit cotangents to the hidden, weight and bias cotangents.

  `d_logits` is ∂value/∂logits for the chunk (0 in columns that are not fresh); the chain rule
  through (hidden @ weight + bias) / temperature gives the three updates. `grads` = (d_weight,
  d_bias) over the whole vocabulary, `d_hidden` the token chunk's rows.
  """
  size = config.vocab_chunk
  d_logits = jnp.where(fresh, d_logits, 0.0) / config.temperature
  weight = jax.lax.dynamic_slice_in_dim(head.weight, start, size, 1)
  d_hidden = d_hidden + jnp.dot(d_logits, weight.T)
  d_weight = add_columns(grads[0], start, jnp.dot(hidden.T, d_logits))
  d_bias = add_columns(grads[1], start, jnp.sum(d_logits, axis=0))
  return d_hidden, (d_weight, d_bias)


def finite_max(x: jax.Array) -> jax.Array:
  """Largest finite entry of each row (−∞ if none)."""
  return jnp.max(jnp.where(jnp.isfinite(x), x, -jnp.inf), axis=-1)


def undefined(x: jax.Array) -> jax.Array:
  """Rows with a NaN or +∞ logit (softmax undefined)."""
  return jnp.any(jnp.isnan(x) | (x == jnp.inf), axis=-1)


def reference(m: jax.Array) -> jax.Array:
  """The running maximum as a finite centre: 0 while there is none."""
  return jnp.where(m == -jnp.inf, 0.0, m)


def online_lse(state, x: jax.Array):
  """One chunk's update of (max, Σ e^(x − max), undefined) per row: an online log-sum-exp."""
  m, s, bad = state
  new = jnp.maximum(m, finite_max(x))
  scale = jnp.where(m == -jnp.inf, 0.0, jnp.exp(reference(m) - reference(new)))
  e = jnp.exp(jnp.where(jnp.isfinite(x), x - reference(new)[:, None], -jnp.inf))
  return new, s * scale + jnp.sum(e, axis=-1), bad | undefined(x)


def lse_init(n: int, dtype):
  """The online log-sum-exp state of `n` rows with no outcome yet."""
  return jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype), jnp.zeros((n,), bool)
