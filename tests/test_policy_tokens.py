"""Sampled-token log-probabilities and masked reductions, against scipy and numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import klax


def test_token_log_probs_match_scipy_and_masked_vocabulary_is_exact():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(4, 5))
  where = np.ones((4, 5, 7), bool)
  where[..., 5:] = False  # Two vocabulary entries that do not exist.
  tokens_in = tokens % 5
  expected = np.take_along_axis(scipy.special.log_softmax(logits / 0.7, -1), tokens[..., None], -1)
  got = klax.token_log_probs(logits, tokens, temperature=0.7)
  np.testing.assert_allclose(got, expected[..., 0], rtol=1e-5, atol=1e-6)
  masked = klax.token_log_probs(logits, tokens_in, where)
  reference = scipy.special.log_softmax(logits[..., :5].astype(np.float64), -1)
  np.testing.assert_allclose(
    masked, np.take_along_axis(reference, tokens_in[..., None], -1)[..., 0], rtol=1e-6
  )
  minus_inf = np.where(where, logits, -np.inf)
  np.testing.assert_array_equal(klax.token_log_probs(minus_inf, tokens_in), masked)
  assert klax.token_log_probs(minus_inf, np.full((4, 5), 6))[0, 0] == -np.inf  # Probability 0.


def test_token_log_probs_edges_jit_vmap_grad():
  logits = jnp.array([[0.0, 1.0, 2.0], [-jnp.inf, -jnp.inf, -jnp.inf], [0.0, jnp.nan, 1.0]])
  got = klax.token_log_probs(logits, jnp.array([3, 0, 0]))
  assert np.all(np.isnan(got))  # Out of range; no outcome; NaN in the row.
  grad = jax.grad(lambda x: jnp.sum(jnp.nan_to_num(klax.token_log_probs(x, jnp.array([1, 0, 0])))))(
    logits
  )
  np.testing.assert_allclose(grad[0], np.array([0.0, 1.0, 0.0]) - scipy.special.softmax([0, 1, 2]))
  assert np.all(grad[1] == 0.0)
  batch = jnp.arange(12.0).reshape(2, 2, 3) / 5
  toks = jnp.array([[0, 2], [1, 1]])
  np.testing.assert_allclose(
    jax.vmap(klax.token_log_probs)(batch, toks), klax.token_log_probs(batch, toks), rtol=1e-6
  )
  with pytest.raises(TypeError, match="`tokens`"):
    klax.token_log_probs(batch, toks.astype(float))
  with pytest.raises(ValueError, match="`tokens`"):
    klax.token_log_probs(batch, toks[0])
  with pytest.raises(ValueError, match="`temperature`"):
    klax.token_log_probs(batch, toks, temperature=0.0)


def _reference(x, m, mode, length=None):
  """trl's and verl's formulas, written out in numpy."""
  kept, n = np.where(m, x, 0.0), m.sum(-1)
  if mode == "token-mean":  # verl token-mean; trl bnpo.
    return kept.sum() / max(m.sum(), 1)
  if mode == "seq-mean-token-sum":
    return kept.sum(-1).mean()
  if mode == "seq-mean-token-mean":  # trl grpo: per-sequence mean with n clamped to 1.
    return (kept.sum(-1) / np.maximum(n, 1)).mean()
  return kept.sum() / (x.shape[0] * (length or x.shape[-1]))  # trl dr_grpo.


def test_reductions_match_trl_and_verl_conventions():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 6)).astype(np.float32)
  m = rng.random((5, 6)) < 0.6
  m[2] = False  # A sequence with no response token.
  x[~m] = np.nan  # Never looked at.
  for mode in klax._policy_tokens.BATCH_MODES:
    np.testing.assert_allclose(
      klax.reduce_tokens(x, m, mode=mode), _reference(x, m, mode), rtol=1e-6
    )
  np.testing.assert_allclose(
    klax.reduce_tokens(x, m, mode="seq-mean-token-sum-norm", max_length=10),
    _reference(x, m, "dr", 10),
    rtol=1e-6,
  )
  np.testing.assert_allclose(klax.reduce_sequence(x, m), np.where(m, x, 0).sum(-1), rtol=1e-6)
  means = klax.reduce_sequence(x, m, mode="token-mean")
  assert means[2] == 0.0
  none = np.zeros_like(m)
  for mode in klax._policy_tokens.BATCH_MODES:
    assert klax.reduce_tokens(x, none, mode=mode) == 0.0
    grad = jax.grad(lambda v, mode=mode: klax.reduce_tokens(v, m, mode=mode))(jnp.asarray(x))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~m] == 0.0)
  np.testing.assert_allclose(
    jax.vmap(lambda v, k: klax.reduce_sequence(v, k, mode="token-mean"))(x, m), means, rtol=1e-6
  )
  nan_row = np.where(m, x, 0.0)
  nan_row[0, np.argmax(m[0])] = np.nan
  assert np.isnan(klax.reduce_tokens(nan_row, m))
  with pytest.raises(ValueError, match="`mode`"):
    jax.jit(lambda v: klax.reduce_tokens(v, mode="seq-mean"))(x)
  with pytest.raises(ValueError, match="`max_length`"):
    klax.reduce_tokens(x, m, max_length=4)
  with pytest.raises(TypeError, match="`mask`"):
    klax.reduce_sequence(x, m.astype(np.float32))
