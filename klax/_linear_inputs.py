"""Checked inputs of the linear-head divergences: heads, biases, masks and chunking options."""

from __future__ import annotations

import jax.numpy as jnp

from klax import _checks
from klax import _linear_chunks as chunks


def heads(arrays: dict, biases: dict, where, token_mask):
  """Checked heads ([N, D] hidden, [D, V] weight, [V] bias), batch shape and token mask."""
  checked = {k: _checks.float_array(v, k) for k, v in arrays.items()}
  names = list(arrays)
  for hidden, weight in zip(names[::2], names[1::2], strict=True):
    h, w = checked[hidden], checked[weight]
    if h.ndim < 1 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
      raise ValueError(
        f"`{hidden}` [..., D] and `{weight}` [D, V] must have matching D, got shapes "
        f"{h.shape} and {w.shape}."
      )
  batch, vocab = checked[names[0]].shape[:-1], checked[names[1]].shape[1]
  for hidden, weight in zip(names[2::2], names[3::2], strict=True):
    if checked[hidden].shape[:-1] != batch or checked[weight].shape[1] != vocab:
      raise ValueError(
        f"`{names[0]}`/`{names[1]}` and `{hidden}`/`{weight}` must have the same tokens and "
        f"vocabulary, got {checked[names[0]].shape}, {checked[names[1]].shape} and "
        f"{checked[hidden].shape}, {checked[weight].shape}."
      )
  if vocab == 0 or 0 in batch:
    raise ValueError(f"Need at least one token and one outcome, got {batch} tokens, V = {vocab}.")
  for name, bias in biases.items():
    if bias is not None:
      bias = _checks.float_array(bias, name)
      if bias.shape != (vocab,):
        raise ValueError(f"`{name}` must have shape ({vocab},), got {bias.shape}.")
    biases[name] = bias
  if where is not None:
    where = _checks.mask(where, (vocab,), "where")
  if token_mask is not None:
    token_mask = _checks.mask(token_mask, batch, "token_mask")
  everything = [*checked.values(), *(b for b in biases.values() if b is not None)]
  dtype = jnp.result_type(*(_checks.promote_low_precision(x).dtype for x in everything))
  heads = []
  for (hidden, weight), bias in zip(
    zip(names[::2], names[1::2], strict=True), biases.values(), strict=True
  ):
    h = checked[hidden].astype(dtype).reshape(-1, checked[hidden].shape[-1])
    b = jnp.zeros((vocab,), dtype) if bias is None else bias.astype(dtype)
    if where is not None:
      b = jnp.where(where, b, -jnp.inf)
    heads.append(chunks.Head(h, checked[weight].astype(dtype), b))
  return heads, batch, token_mask


def config(temperature, token_chunk, vocab_chunk) -> chunks.Config:
  return chunks.Config(
    _checks.positive_int(token_chunk, "token_chunk"),
    _checks.positive_int(vocab_chunk, "vocab_chunk"),
    _checks.finite_positive(temperature, "temperature"),
  )
