"""Sampled-token log-probabilities from logits, and masked reductions over tokens and sequences.

The per-token arrays of policy optimisation have shape [..., T]: the last axis is the position in
a response, every leading axis indexes sequences, and a boolean `mask` of the same (broadcast)
shape marks the response tokens (False: prompt or padding). Values at masked positions are never
looked at: NaN there does not reach the result, and their gradients are 0.

How a batch of per-token terms x_{i,t} (sequences i = 1..B, mask m_{i,t}, n_i = Σ_t m_{i,t})
becomes one number, in the names verl gives them (`loss_agg_mode`) beside trl's `loss_type`:

| `mode` (verl's name)      | value                           | verl          | trl         |
|---------------------------|---------------------------------|---------------|-------------|
| "token-mean"              | Σ_{i,t} m x / max(Σ_i n_i, 1)   | the default   | bnpo; dapo¹ |
| "seq-mean-token-sum"      | (1/B) Σ_i Σ_t m x               | same name     | —           |
| "seq-mean-token-mean"     | (1/B) Σ_i Σ_t m x / max(n_i, 1) | same name     | grpo        |
| "seq-mean-token-sum-norm" | Σ_{i,t} m x / (B · L)           | same name²    | dr_grpo     |

¹ trl's dapo divides by the number of response tokens of the whole global batch (across devices
and accumulation steps); within one batch it is token-mean. ² L is `max_length` (default T, the
padded length; Dr. GRPO wants a constant, e.g. the maximum response length); verl's older
releases divided Σ m x by T alone, without 1/B. A sequence with no response token counts in B and
contributes 0 (trl clamps n_i to 1; verl adds 1e-8); a batch with no response token gives 0.

Which one is an unbiased estimate of what: with the per-sequence sum Σ_t of a `klax.kl_penalty`
surrogate, "seq-mean-token-sum" (and "seq-mean-token-sum-norm", up to the constant 1/L)
estimates the stated objective per sequence; "token-mean" and "seq-mean-token-mean" weight
sequences by their lengths (the first in proportion, the second inversely), so they estimate the
gradient of a different, length-weighted objective.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from klax import _checks
from klax._logits import log_softmax_rows
from klax._logits import mask_logits

BATCH_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
SEQUENCE_MODES = ("token-sum", "token-mean")


def option(value, name: str, choices: tuple) -> str:
  """Returns `value` if it is one of `choices`, or raises `ValueError` naming `name`."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
  return value


def token_mask(mask, shape: tuple, name: str = "mask") -> jax.Array:
  """`mask` broadcast to `shape` (all True for None); a boolean array, else an error."""
  if mask is None:
    return jnp.ones(shape, bool)
  return jnp.broadcast_to(_checks.mask(mask, shape, name), shape)


def per_token_values(values, name: str = "values") -> jax.Array:
  """`values` as a float array of rank >= 1 (low precision promoted), else an error naming it."""
  values = _checks.promote_low_precision(_checks.float_array(values, name))
  if values.ndim == 0:
    raise ValueError(f"`{name}` must have a token axis (shape [..., T]), got a scalar.")
  return values


@functools.partial(jax.jit, static_argnames=("temperature",))
def token_log_probs(logits, tokens, where=None, *, temperature: float = 1.0) -> jax.Array:
  """The sampled tokens' log-probabilities log π(y_t) = log_softmax(logits_t / temperature)[y_t].

  Vocabulary entries outside `where` (or with logit −inf) have probability exactly 0 and take no
  part in the normalisation, as in `jax.nn.log_softmax(..., where=...)`. A token of probability 0
  gives −inf. Undefined, as NaN: a token outside [0, V), a row with NaN or +inf among its
  logits, and a row with no entry of positive probability (all −inf or masked); those rows have
  zero gradients.

  Args:
    logits: float array [..., V] of unnormalised log-probabilities over the vocabulary.
    tokens: integer array [...] of the sampled tokens.
    where: optional boolean array broadcastable to `logits`: the vocabulary entries that exist.
    temperature: a positive Python float that divides the logits (the sampling temperature).

  Returns:
    A float array of shape `tokens.shape` (float32 for float16/bfloat16 logits).

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    >>> klax.token_log_probs(logits, jnp.array([1])).tolist() == [float(jnp.log(0.25))]
    True
  """
  temperature = _checks.finite_positive(temperature, "temperature")
  logits = _checks.promote_low_precision(_checks.float_array(logits, "logits"))
  if logits.ndim == 0:
    raise ValueError("`logits` must have a vocabulary axis (shape [..., V]), got a scalar.")
  tokens = jnp.asarray(tokens)
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"`tokens` must be an array of integers, got {tokens.dtype}.")
  if tokens.shape != logits.shape[:-1]:
    raise ValueError(
      f"`tokens` must have the shape of `logits` without its last axis, {logits.shape[:-1]}, "
      f"got {tokens.shape}."
    )
  if where is not None:
    where = _checks.mask(where, logits.shape, "where")
  masked = mask_logits(logits / temperature, where)
  (log_p,), (empty,), undefined = log_softmax_rows([masked], axis=-1)
  vocabulary = logits.shape[-1]
  inside = (tokens >= 0) & (tokens < vocabulary)
  index = jnp.where(inside, tokens, 0)[..., None]
  chosen = jnp.take_along_axis(log_p, index, axis=-1)[..., 0]
  return jnp.where(inside & ~empty & ~undefined, chosen, jnp.nan)


@functools.partial(jax.jit, static_argnames=("mode",))
def reduce_sequence(values, mask=None, *, mode: Literal["token-sum", "token-mean"] = "token-sum"):
  """Per-sequence reduction over the last (token) axis: Σ_t m_t x_t, or that / max(Σ_t m_t, 1).

  Args:
    values: float array [..., T] of per-token terms.
    mask: optional boolean array broadcastable to `values` (True: a response token).
    mode: "token-sum" or "token-mean".

  Returns:
    A float array [...]; a sequence with no response token gives 0 (zero gradients).
  """
  mode = option(mode, "mode", SEQUENCE_MODES)
  values = per_token_values(values)
  mask = token_mask(mask, values.shape)
  total = jnp.sum(jnp.where(mask, values, 0.0), axis=-1)
  if mode == "token-sum":
    return total
  return total / jnp.maximum(jnp.sum(mask, axis=-1), 1).astype(total.dtype)


@functools.partial(jax.jit, static_argnames=("mode", "max_length"))
def reduce_tokens(
  values,
  mask=None,
  *,
  mode: Literal[
    "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
  ] = "token-mean",
  max_length: int | None = None,
) -> jax.Array:
  """One number from a batch of per-token terms, by verl's `loss_agg_mode` (see the module table).

  Args:
    values: float array [..., T]; every leading axis indexes sequences (B is their product).
    mask: optional boolean array broadcastable to `values` (True: a response token).
    mode: "token-mean", "seq-mean-token-sum", "seq-mean-token-mean" or "seq-mean-token-sum-norm".
    max_length: L of "seq-mean-token-sum-norm" (a positive int; default T); only for that mode.

  Returns:
    A scalar; 0 (zero gradients) when no token is a response token.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> x = jnp.array([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    >>> m = jnp.array([[True, True, True], [True, False, False]])
    >>> float(klax.reduce_tokens(x, m, mode="token-mean")), float(
    ...   klax.reduce_tokens(x, m, mode="seq-mean-token-mean"))
    (1.75, 2.5)
  """
  mode = option(mode, "mode", BATCH_MODES)
  if max_length is not None:
    if mode != "seq-mean-token-sum-norm":
      raise ValueError("`max_length` is used only by mode='seq-mean-token-sum-norm'.")
    max_length = _checks.positive_int(max_length, "max_length")
  values = per_token_values(values)
  mask = token_mask(mask, values.shape)
  kept = jnp.where(mask, values, 0.0)
  sequences = int(np.prod(values.shape[:-1]))
  if mode == "token-mean":
    return jnp.sum(kept) / jnp.maximum(jnp.sum(mask), 1).astype(kept.dtype)
  if mode == "seq-mean-token-sum-norm":
    return jnp.sum(kept) / (sequences * (max_length or values.shape[-1]))
  sequence_mode = "token-sum" if mode == "seq-mean-token-sum" else "token-mean"
  return jnp.mean(reduce_sequence(values, mask, mode=sequence_mode))
