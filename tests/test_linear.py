"""Linear-head divergences against float64 numpy references and the dense `*_logits` functions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from scipy.special import log_softmax

import klax
from klax import _linear

BETA = 0.3
# (N, D_p, D_q, V, token_chunk, vocab_chunk, temperature): chunks that do not divide N or V, a
# single outcome, chunks larger than the arrays.
SHAPES = [(37, 6, 4, 101, 16, 32, 1.0), (5, 3, 3, 7, 2, 3, 0.7), (3, 2, 2, 1, 8, 8, 2.0)]


def _all(hp, wp, bp, hq, wq, bq, *, config):
  """Values and gradients (w.r.t. every input) of the four linear functions, and of the dense."""
  n, _, _, _, tc, vc, temperature = config
  weights = jnp.linspace(0.5, 1.5, n)  # Every token's gradient counts, with its own weight.
  kw = dict(token_chunk=tc, vocab_chunk=vc, temperature=temperature)
  functions = {
    "kl": (
      lambda *x: klax.kl_divergence_linear(*x[:2], *x[3:5], p_bias=x[2], q_bias=x[5], **kw),
      lambda *x: klax.kl_divergence_logits(a_of(x), b_of(x)),
    ),
    "ce": (
      lambda *x: klax.cross_entropy_linear(*x[:2], *x[3:5], p_bias=x[2], q_bias=x[5], **kw),
      lambda *x: klax.cross_entropy_logits(a_of(x), b_of(x)),
    ),
    "entropy": (
      lambda *x: klax.entropy_linear(*x[:2], bias=x[2], **kw),
      lambda *x: klax.entropy_logits(a_of(x)),
    ),
    "jsd": (
      lambda *x: klax.jensen_shannon_linear(
        *x[:2], *x[3:5], beta=BETA, p_bias=x[2], q_bias=x[5], **kw
      ),
      None,
    ),
  }

  def a_of(x):
    return (x[0] @ x[1] + x[2]) / temperature

  def b_of(x):
    return (x[3] @ x[4] + x[5]) / temperature

  inputs = (hp, wp, bp, hq, wq, bq)
  out = {}
  for name, (fused, dense) in functions.items():
    for label, fn in (("fused", fused), ("dense", dense)):
      if fn is not None:
        out[f"{name}_{label}"] = fn(*inputs)
        out[f"{name}_{label}_grad"] = jax.grad(
          lambda *x, fn=fn: jnp.sum(weights * fn(*x)),
          argnums=range(6),
        )(*inputs)
  return out


@functools.cache
def _compiled(config):
  return jax.jit(functools.partial(_all, config=config))


def _reference(a, b, v_weights):
  """float64 KL, cross-entropy, entropy, JSD(β) and the KL's logit gradients from the logits."""
  with np.errstate(all="ignore"):
    la, lb = log_softmax(a, -1), log_softmax(b, -1)
    pa, pb = np.exp(la), np.exp(lb)

    def xlogy(x, y):
      return np.where(x > 0, x * np.where(x > 0, y, 0.0), 0.0)

    lm = np.logaddexp(np.log(BETA) + la, np.log1p(-BETA) + lb)
    kl = np.sum(xlogy(pa, la - lb), -1)
    d_a = pa * np.where(pa > 0, la - lb - kl[:, None], 0.0)
    return {
      "kl": kl,
      "ce": -np.sum(xlogy(pa, lb), -1),
      "entropy": -np.sum(xlogy(pa, la), -1),
      "jsd": BETA * np.sum(xlogy(pa, la - lm), -1) + (1 - BETA) * np.sum(xlogy(pb, lb - lm), -1),
      "kl_d_a": d_a * v_weights[:, None],
      "kl_d_b": (pb - pa) * v_weights[:, None],
    }


@settings(max_examples=12)  # One compilation per shape; the contents vary.
@given(
  case=st.sampled_from(SHAPES),
  seed=st.integers(0, 2**31 - 1),
  scale=st.sampled_from([1e-3, 1.0, 4.0, 30.0]),
  masked=st.floats(0.0, 0.5),
)
def test_values_and_gradients_match_float64_and_dense(case, seed, scale, masked):
  n, dp, dq, v, *_ = case
  rng = np.random.default_rng(seed)
  hp = rng.normal(size=(n, dp)).astype(np.float32)
  wp = (scale * rng.normal(size=(dp, v)) / np.sqrt(dp)).astype(np.float32)
  hq = rng.normal(size=(n, dq)).astype(np.float32)
  wq = (scale * rng.normal(size=(dq, v)) / np.sqrt(dq)).astype(np.float32)
  # −∞ bias marks outcomes of probability 0 in both models (a vocabulary mask).
  off = rng.uniform(size=v) < masked
  off[0] = False
  bp = np.where(off, -np.inf, 0.0).astype(np.float32)
  bq = np.where(off, -np.inf, 0.0).astype(np.float32)
  out = _compiled(case)(hp, wp, bp, hq, wq, bq)
  a64 = (hp.astype(np.float64) @ wp + bp.astype(np.float64)) / case[-1]
  b64 = (hq.astype(np.float64) @ wq + bq.astype(np.float64)) / case[-1]
  reference = _reference(a64, b64, np.linspace(0.5, 1.5, n))
  # Gradients carry E_p[t]'s rounding, about 1e-7 of the logits' size, also where they are 0 on
  # paper (one outcome, p = q).
  floor = 1e-7 * (1 + scale) ** 2
  for name in ("kl", "ce", "entropy", "jsd"):
    # float32 logits carry rounding of ~1e-7 of their size: the bound of any float32 method.
    tolerance = 2e-5 * (1 + scale**2) * (1 + np.abs(reference[name]))
    np.testing.assert_array_less(np.abs(out[f"{name}_fused"] - reference[name]), tolerance)
    # Entropy and cross-entropy gradients are compared for logits up to size ~4 s / T = 16: for
    # larger (peaked rows) both float32 forms lose ulps of log q against a gradient near 0.
    if f"{name}_dense" in out and (name == "kl" or scale <= 4):
      np.testing.assert_array_less(np.abs(out[f"{name}_fused"] - out[f"{name}_dense"]), tolerance)
      for fused, dense in zip(out[f"{name}_fused_grad"], out[f"{name}_dense_grad"], strict=True):
        # Relative to the gradient's size: float32 logits of size s move p by ~1e-7 s. The
        # entropy and cross-entropy gradients p (log q + H) are differences of numbers as large
        # as log V + the logits (s / T, up to 4 s / T here), to ulps in both forms: near a
        # uniform p (gradient of size s) that is 1e-5 / s of the gradient; for peaked ones (a
        # token's largest entry far from the others) up to 3e-4 s / T.
        edges = 0.0 if name == "kl" else 1 / scale + 30 * scale / case[-1]
        rel = 1e-5 * (1 + scale + edges)
        np.testing.assert_allclose(fused, dense, atol=rel * np.abs(dense).max() + floor)
  # The KL's gradients from the float64 logit gradients by the chain rule.
  t = case[-1]
  expect = [
    reference["kl_d_a"] @ wp.T.astype(np.float64) / t,
    hp.T.astype(np.float64) @ reference["kl_d_a"] / t,
    reference["kl_d_a"].sum(0) / t,
    reference["kl_d_b"] @ wq.T.astype(np.float64) / t,
    hq.T.astype(np.float64) @ reference["kl_d_b"] / t,
    reference["kl_d_b"].sum(0) / t,
  ]
  for got, want in zip(out["kl_fused_grad"], expect, strict=True):
    np.testing.assert_allclose(got, want, atol=2e-5 * (1 + scale) * np.abs(want).max() + floor)


def test_small_kl_is_accurate_when_p_is_close_to_q():
  # Identity weights make the logits exactly the hidden states, so the float32 inputs are the
  # exact logits and the comparison measures the formula alone.
  rng = np.random.default_rng(0)
  v = 300
  hp = (3.0 * rng.normal(size=(20, v))).astype(np.float32)
  noise = np.logspace(-4, -1, 20)[:, None]
  hq = (hp + noise * rng.normal(size=(20, v))).astype(np.float32)
  eye = np.eye(v, dtype=np.float32)
  fused = klax.kl_divergence_linear(hp, eye, hq, eye, token_chunk=8, vocab_chunk=64)
  la, lb = log_softmax(hp.astype(np.float64), -1), log_softmax(hq.astype(np.float64), -1)
  exact = np.sum(np.exp(la) * (la - lb), -1)
  assert exact.min() < 1e-8 and exact.max() > 1e-3
  np.testing.assert_allclose(fused, exact, rtol=1e-5)
  np.testing.assert_allclose(klax.kl_divergence_logits(hp, hq), exact, rtol=1e-5)


def test_edges_masks_nan_and_token_mask():
  rng = np.random.default_rng(1)
  n, d, v = 6, 3, 10
  h = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(d, v)).astype(np.float32)
  kw = dict(token_chunk=4, vocab_chunk=4)
  nan_h = h.copy()
  nan_h[2, 0] = np.nan
  kl = klax.kl_divergence_linear(nan_h, w, h, w, **kw)
  assert np.isnan(kl[2]) and np.all(np.isfinite(np.delete(np.asarray(kl), 2)))
  assert np.isnan(klax.entropy_linear(nan_h, w, **kw)[2])
  assert np.isnan(klax.jensen_shannon_linear(h, w, nan_h, w, **kw)[2])
  # p > 0 = q: +∞ for the KL and cross-entropy; a q of no outcome at all: +∞ too.
  q_bias = np.zeros(v, np.float32)
  q_bias[3] = -np.inf
  assert np.all(klax.kl_divergence_linear(h, w, h, w, q_bias=q_bias, **kw) == np.inf)
  assert np.all(klax.cross_entropy_linear(h, w, h, w, q_bias=q_bias, **kw) == np.inf)
  # +∞ logit: NaN; nothing inside `where`: 0 (an empty sum).
  plus = np.zeros(v, np.float32)
  plus[1] = np.inf
  assert np.all(np.isnan(klax.kl_divergence_linear(h, w, h, w, p_bias=plus, **kw)))
  nothing = np.zeros(v, bool)
  assert np.all(klax.kl_divergence_linear(h, w, h, w, where=nothing, **kw) == 0)
  # `where` equals a −∞ bias; masked tokens are 0 with zero gradients.
  keep = rng.uniform(size=v) < 0.6
  keep[0] = True
  h2 = rng.normal(size=(n, d)).astype(np.float32)
  bias = np.where(keep, 0.0, -np.inf).astype(np.float32)
  np.testing.assert_array_equal(
    klax.kl_divergence_linear(h, w, h2, w, where=keep, **kw),
    klax.kl_divergence_linear(h, w, h2, w, p_bias=bias, q_bias=bias, **kw),
  )
  tokens = np.array([True, False, True, True, False, True])

  def masked_sum(h, h2):
    return klax.kl_divergence_linear(h, w, h2, w, where=keep, token_mask=tokens, **kw).sum()

  value = klax.kl_divergence_linear(h, w, h2, w, token_mask=tokens, **kw)
  assert np.all(value[~tokens] == 0) and np.all(value[tokens] > 0)
  grads = jax.grad(masked_sum, argnums=(0, 1))(h, h2)
  assert all(np.all(g[~tokens] == 0) and np.all(np.isfinite(g)) for g in grads)


def test_jit_vmap_batch_axes_and_jsd_limits():
  rng = np.random.default_rng(2)
  h, h2 = rng.normal(size=(2, 2, 5, 3)).astype(np.float32)
  w = rng.normal(size=(3, 9)).astype(np.float32)
  kw = dict(token_chunk=2, vocab_chunk=4)
  batched = klax.kl_divergence_linear(h, w, h2, w, **kw)
  mapped = jax.vmap(lambda x, y: klax.kl_divergence_linear(x, w, y, w, **kw))(h, h2)
  jitted = jax.jit(lambda x, y: klax.kl_divergence_linear(x, w, y, w, **kw))(h, h2)
  dense = klax.kl_divergence_logits(h @ w, h2 @ w)
  assert batched.shape == (2, 5)
  for got in (batched, mapped, jitted):
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-7)
  # β = 0 and 1 are the KLs in each direction, which JSD(β) / (β (1 − β)) tends to.
  eps = 1e-4
  jsd = [klax.jensen_shannon_linear(h, w, h2, w, beta=b, **kw) for b in (0.0, eps, 1 - eps, 1.0)]
  np.testing.assert_allclose(jsd[0], dense, rtol=1e-5)
  np.testing.assert_allclose(jsd[3], klax.kl_divergence_logits(h2 @ w, h @ w), rtol=1e-5)
  # At the rate O(β) (and float32 rounding of a JSD of size β KL).
  np.testing.assert_allclose(jsd[1] / (eps * (1 - eps)), jsd[0], rtol=2e-2)
  np.testing.assert_allclose(jsd[2] / (eps * (1 - eps)), jsd[3], rtol=2e-2)
  # Compiled once per shape: new data of the same shape does not retrace.
  before = _linear._compiled._cache_size()
  klax.kl_divergence_linear(h + 1, w, h2, w, **kw)
  assert _linear._compiled._cache_size() == before


def test_bad_arguments_raise_naming_them():
  h, w = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
  with pytest.raises(ValueError, match="q_weight"):
    klax.kl_divergence_linear(h, w, h, np.ones((3, 6), np.float32))
  with pytest.raises(ValueError, match="p_hidden"):
    klax.kl_divergence_linear(np.ones((4, 2), np.float32), w, h, w)
  with pytest.raises(TypeError, match="q_hidden"):
    klax.kl_divergence_linear(h, w, np.ones((4, 3), np.int32), w)
  with pytest.raises(ValueError, match="p_bias"):
    klax.kl_divergence_linear(h, w, h, w, p_bias=np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="temperature"):
    klax.kl_divergence_linear(h, w, h, w, temperature=0.0)
  with pytest.raises(TypeError, match="vocab_chunk"):
    klax.kl_divergence_linear(h, w, h, w, vocab_chunk=2.5)
  with pytest.raises(ValueError, match="beta"):
    klax.jensen_shannon_linear(h, w, h, w, beta=1.5)
  with pytest.raises(ValueError, match="token_mask"):
    klax.kl_divergence_linear(h, w, h, w, token_mask=np.ones(3, bool))


def test_peak_memory_is_chunked_not_tokens_by_vocabulary():
  # Compiled only (not run): XLA's memory analysis of value and gradient at N = 2,048,
  # V = 16,384, where the logits of one model alone are 128 MiB.
  n, d, v = 2048, 32, 16384
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v))]

  def fused(hp, wp, hq, wq):
    return klax.kl_divergence_linear(hp, wp, hq, wq, token_chunk=256, vocab_chunk=1024).sum()

  def dense(hp, wp, hq, wq):
    return klax.kl_divergence_logits(hp @ wp, hq @ wq).sum()

  def temp(fn):
    return jax.jit(jax.value_and_grad(fn, argnums=range(4))).lower(*args).compile()

  logits = n * v * 4
  fused_bytes = temp(fused).memory_analysis().temp_size_in_bytes
  dense_bytes = temp(dense).memory_analysis().temp_size_in_bytes
  # O(chunk + (N + V) D): a few [256, 1024] chunks and the [D, V] weight gradients.
  assert fused_bytes < 16 * 256 * 1024 * 4 + 8 * (n + v) * d * 4 < logits / 3
  assert dense_bytes > 2 * logits
