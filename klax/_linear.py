"""Per-token divergences of two linear output layers without materialising the logits.

A language model's logits for token n are `hidden[n] @ weight (+ bias)`: [N, D] @ [D, V]. At
N = 16,384 and V = 128,000 that is 8 GiB per model in float32. These functions compute the
per-token KL, entropy, cross-entropy and JSD(β) from the hidden states and the output weights in
chunks of `token_chunk` tokens by `vocab_chunk` outcomes (an online log-sum-exp over the
vocabulary), and their gradients with respect to every input by recomputing the chunks: memory
O(token_chunk · vocab_chunk + (N + V) · D), not O(N · V). Values and gradients equal those of the
dense `klax.*_logits` functions on `hidden @ weight + bias` to float32 rounding, with the same
edge values (NaN or +∞ logits give NaN; p > 0 = q gives +∞ for the KL and cross-entropy; a token
whose p has no outcome gives 0). Compiled at entry once per shape, dtype and static option.

Common arguments: `*_bias` ([V], may hold −∞: probability 0), `where` ([V] boolean, outcomes
taking part; others get probability 0 in both models), `token_mask` ([N] boolean; a masked
token's value is 0 and its gradients are 0), `temperature` (a positive Python float dividing both
models' logits), `token_chunk` and `vocab_chunk` (positive Python ints). Hidden states may carry
leading batch axes ([..., N, D] is read as [prod(...) · N, D]); the result has them too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from klax import _linear_chunks as chunks
from klax import _linear_inputs as _inputs
from klax._linear_kl import linear_kl
from klax._linear_sums import linear_sum

TOKEN_CHUNK = 1024
VOCAB_CHUNK = 2048


@functools.partial(jax.jit, static_argnames=("kind", "beta", "config", "batch"))
def _compiled(heads, token_mask, *, kind, beta, config, batch):
  n, v = heads[0].hidden.shape[0], heads[0].weight.shape[1]
  config = chunks.fit_config(config, n, v)
  if kind == "kl":
    value = linear_kl(config, heads[0], heads[1])
  else:
    value = linear_sum(kind, beta, config, tuple(heads))
  value = value.reshape(batch)
  return value if token_mask is None else jnp.where(token_mask, value, 0.0)


def _call(kind, beta, arrays, biases, where, token_mask, temperature, token_chunk, vocab_chunk):
  heads, batch, token_mask = _inputs.heads(arrays, biases, where, token_mask)
  config = _inputs.config(temperature, token_chunk, vocab_chunk)
  return _compiled(tuple(heads), token_mask, kind=kind, beta=beta, config=config, batch=batch)


def kl_divergence_linear(
  p_hidden: ArrayLike,
  p_weight: ArrayLike,
  q_hidden: ArrayLike,
  q_weight: ArrayLike,
  *,
  p_bias: ArrayLike | None = None,
  q_bias: ArrayLike | None = None,
  where: ArrayLike | None = None,
  token_mask: ArrayLike | None = None,
  temperature: float = 1.0,
  token_chunk: int = TOKEN_CHUNK,
  vocab_chunk: int = VOCAB_CHUNK,
) -> jax.Array:
  """Per-token KL(p ‖ q) of two linear heads, without forming the [N, V] logits.

  KL_n = Σ_i p_ni (log p_ni − log q_ni) with log p_n = log_softmax((p_hidden[n] @ p_weight +
  p_bias) / temperature) and log q_n likewise: `klax.kl_divergence_logits` of those logits. Where
  a token's KL is below 1e-2 it is recomputed without cancellation, as the dense function does.

  Args:
    p_hidden: [..., N, D_p] hidden states of p (the model expectations are taken under).
    p_weight: [D_p, V] output weights of p.
    q_hidden: [..., N, D_q] hidden states of q (same tokens; D_q may differ from D_p).
    q_weight: [D_q, V] output weights of q.
    p_bias: optional [V] logit bias of p (−∞ marks an outcome p never takes).
    q_bias: optional [V] logit bias of q.
    where: optional [V] boolean mask of the outcomes that take part.
    token_mask: optional boolean mask of the tokens (shape of the hidden states without D).
    temperature: positive float dividing every logit of both models.
    token_chunk: tokens per chunk.
    vocab_chunk: outcomes per chunk.

  Returns:
    The KL of each token, shape of `p_hidden` without its last axis.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> h, w = jnp.ones((2, 3)), jnp.eye(3)
    >>> klax.kl_divergence_linear(h, w, h, w).tolist()
    [0.0, 0.0]
  """
  arrays = {"p_hidden": p_hidden, "p_weight": p_weight, "q_hidden": q_hidden, "q_weight": q_weight}
  biases = {"p_bias": p_bias, "q_bias": q_bias}
  return _call("kl", None, arrays, biases, where, token_mask, temperature, token_chunk, vocab_chunk)


def cross_entropy_linear(
  p_hidden: ArrayLike,
  p_weight: ArrayLike,
  q_hidden: ArrayLike,
  q_weight: ArrayLike,
  *,
  p_bias: ArrayLike | None = None,
  q_bias: ArrayLike | None = None,
  where: ArrayLike | None = None,
  token_mask: ArrayLike | None = None,
  temperature: float = 1.0,
  token_chunk: int = TOKEN_CHUNK,
  vocab_chunk: int = VOCAB_CHUNK,
) -> jax.Array:
  """Per-token cross-entropy H(p, q) = −Σ_i p_ni log q_ni of two linear heads (soft targets p).

  p and q as in `kl_divergence_linear`: `klax.cross_entropy_logits` of their logits.

  Args:
    p_hidden: [..., N, D_p] hidden states of p (the soft targets).
    p_weight: [D_p, V] output weights of p.
    q_hidden: [..., N, D_q] hidden states of q.
    q_weight: [D_q, V] output weights of q.
    p_bias: optional [V] logit bias of p.
    q_bias: optional [V] logit bias of q.
    where: optional [V] boolean mask of the outcomes that take part.
    token_mask: optional boolean mask of the tokens.
    temperature: positive float dividing every logit of both models.
    token_chunk: tokens per chunk.
    vocab_chunk: outcomes per chunk.

  Returns:
    The cross-entropy of each token, shape of `p_hidden` without its last axis.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> h, w = jnp.ones((2, 3)), jnp.zeros((3, 4))
    >>> [round(x, 4) for x in klax.cross_entropy_linear(h, w, h, w).tolist()]  # log 4
    [1.3863, 1.3863]
  """
  arrays = {"p_hidden": p_hidden, "p_weight": p_weight, "q_hidden": q_hidden, "q_weight": q_weight}
  biases = {"p_bias": p_bias, "q_bias": q_bias}
  return _call(
    "cross_entropy", None, arrays, biases, where, token_mask, temperature, token_chunk, vocab_chunk
  )


def entropy_linear(
  hidden: ArrayLike,
  weight: ArrayLike,
  *,
  bias: ArrayLike | None = None,
  where: ArrayLike | None = None,
  token_mask: ArrayLike | None = None,
  temperature: float = 1.0,
  token_chunk: int = TOKEN_CHUNK,
  vocab_chunk: int = VOCAB_CHUNK,
) -> jax.Array:
  """Per-token entropy H(p) = −Σ_i p_ni log p_ni, log p_n = log_softmax((hidden[n] @ weight + bias) / T).

  `klax.entropy_logits` of those logits.

  Args:
    hidden: [..., N, D] hidden states.
    weight: [D, V] output weights.
    bias: optional [V] logit bias.
    where: optional [V] boolean mask of the outcomes that take part.
    token_mask: optional boolean mask of the tokens.
    temperature: positive float dividing every logit.
    token_chunk: tokens per chunk.
    vocab_chunk: outcomes per chunk.

  Returns:
    The entropy of each token, shape of `hidden` without its last axis.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> [round(x, 4) for x in klax.entropy_linear(jnp.ones((2, 3)), jnp.zeros((3, 4))).tolist()]
    [1.3863, 1.3863]
  """
  arrays = {"hidden": hidden, "weight": weight}
  return _call(
    "entropy",
    None,
    arrays,
    {"bias": bias},
    where,
    token_mask,
    temperature,
    token_chunk,
    vocab_chunk,
  )


def jensen_shannon_linear(
  p_hidden: ArrayLike,
  p_weight: ArrayLike,
  q_hidden: ArrayLike,
  q_weight: ArrayLike,
  *,
  beta: float = 0.5,
  p_bias: ArrayLike | None = None,
  q_bias: ArrayLike | None = None,
  where: ArrayLike | None = None,
  token_mask: ArrayLike | None = None,
  temperature: float = 1.0,
  token_chunk: int = TOKEN_CHUNK,
  vocab_chunk: int = VOCAB_CHUNK,
) -> jax.Array:
  """Per-token generalised Jensen–Shannon divergence JSD(β) of two linear heads.

  JSD_β(p ‖ q) = β KL(p ‖ m) + (1 − β) KL(q ‖ m) with m = β p + (1 − β) q, for 0 < β < 1
  (β = 0.5: the Jensen–Shannon divergence); β = 0 gives KL(p ‖ q) and β = 1 gives KL(q ‖ p),
  the limits of JSD_β / (β (1 − β)). This is the `generalized_jsd_loss` of TRL's GKD trainer
  and Liger's fused linear JSD with p the teacher and q the student.

  Args:
    p_hidden: [..., N, D_p] hidden states of p.
    p_weight: [D_p, V] output weights of p.
    q_hidden: [..., N, D_q] hidden states of q.
    q_weight: [D_q, V] output weights of q.
    beta: a Python float in [0, 1], p's weight in the mixture m.
    p_bias: optional [V] logit bias of p.
    q_bias: optional [V] logit bias of q.
    where: optional [V] boolean mask of the outcomes that take part.
    token_mask: optional boolean mask of the tokens.
    temperature: positive float dividing every logit of both models.
    token_chunk: tokens per chunk.
    vocab_chunk: outcomes per chunk.

  Returns:
    The divergence of each token, shape of `p_hidden` without its last axis.

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> h, w = jnp.ones((1, 2)), jnp.eye(2)
    >>> klax.jensen_shannon_linear(h, w, h, w).tolist()
    [0.0]
  """
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
    raise ValueError(f"`beta` must be a Python float in [0, 1], got {beta!r}.")
  arrays = {"p_hidden": p_hidden, "p_weight": p_weight, "q_hidden": q_hidden, "q_weight": q_weight}
  biases = {"p_bias": p_bias, "q_bias": q_bias}
  if beta in (0, 1):
    if beta == 1:
      arrays = dict(zip(arrays, [q_hidden, q_weight, p_hidden, p_weight], strict=True))
      biases = {"p_bias": q_bias, "q_bias": p_bias}
    kind, beta = "kl", None
  else:
    kind, beta = "jsd", float(beta)
  return _call(kind, beta, arrays, biases, where, token_mask, temperature, token_chunk, vocab_chunk)
