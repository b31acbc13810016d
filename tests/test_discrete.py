"""Discrete-array divergences against scipy.special.rel_entr / scipy.stats.entropy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import klax


def _random_probs(rng, shape, zeros=False):
  p = rng.gamma(0.5, size=shape)
  if zeros:
    p[..., ::3] = 0.0
  return p / p.sum(-1, keepdims=True)


def test_kl_probs_matches_scipy_rel_entr_with_zeros():
  rng = np.random.default_rng(0)
  p = _random_probs(rng, (5, 7), zeros=True)
  q = _random_probs(rng, (5, 7))
  expected = scipy.special.rel_entr(p, q).sum(-1)
  np.testing.assert_allclose(
    klax.kl_divergence_probs(p.astype(np.float32), q.astype(np.float32)),
    expected,
    rtol=1e-5,
    atol=1e-6,
  )


def test_entropy_and_cross_entropy_probs_match_scipy():
  rng = np.random.default_rng(1)
  p = _random_probs(rng, (4, 9), zeros=True)
  q = _random_probs(rng, (4, 9))
  np.testing.assert_allclose(
    klax.entropy_probs(p.astype(np.float32)), scipy.stats.entropy(p, axis=-1), rtol=1e-5
  )
  expected = scipy.stats.entropy(p, axis=-1) + scipy.stats.entropy(p, q, axis=-1)
  np.testing.assert_allclose(
    klax.cross_entropy_probs(p.astype(np.float32), q.astype(np.float32)), expected, rtol=1e-5
  )


def test_axis_argument_reduces_the_named_axis():
  rng = np.random.default_rng(2)
  p, q = _random_probs(rng, (3, 6)), _random_probs(rng, (3, 6))
  got = klax.kl_divergence_probs(p.T.astype(np.float32), q.T.astype(np.float32), axis=0)
  np.testing.assert_allclose(got, scipy.stats.entropy(p, q, axis=-1), rtol=1e-5)


def test_infinite_where_p_positive_and_q_zero():
  assert klax.kl_divergence_probs(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])) == jnp.inf
  assert klax.cross_entropy_probs(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])) == jnp.inf
  assert klax.kl_divergence_logits(jnp.array([0.0, 0.0]), jnp.array([0.0, -jnp.inf])) == jnp.inf


def test_infinite_where_q_is_zero_even_if_p_underflows():
  # p₂ = e^{−200}/(1 + e^{−200}) is 0 in float32 but not on paper, and q₂ = 0: KL = +∞.
  p_logits, q_logits = jnp.array([0.0, -200.0]), jnp.array([0.0, -jnp.inf])
  assert klax.kl_divergence_logits(p_logits, q_logits) == jnp.inf
  # Masked outcomes take no part, whatever their logits.
  where = jnp.array([True, True, False])
  kl = klax.kl_divergence_logits(
    jnp.array([0.0, 1.0, 5.0]), jnp.array([1.0, 0.0, -jnp.inf]), where=where
  )
  p, q = scipy.special.softmax([0.0, 1.0]), scipy.special.softmax([1.0, 0.0])
  np.testing.assert_allclose(kl, scipy.stats.entropy(p, q), rtol=1e-6)


def test_logits_match_scipy_at_vocabulary_size():
  rng = np.random.default_rng(3)
  p_logits = rng.normal(size=(2, 32_000)).astype(np.float32) * 3
  q_logits = rng.normal(size=(2, 32_000)).astype(np.float32) * 3
  p = scipy.special.softmax(p_logits.astype(np.float64), axis=-1)
  q = scipy.special.softmax(q_logits.astype(np.float64), axis=-1)
  np.testing.assert_allclose(
    klax.kl_divergence_logits(p_logits, q_logits), scipy.stats.entropy(p, q, axis=-1), rtol=1e-4
  )
  np.testing.assert_allclose(
    klax.entropy_logits(p_logits), scipy.stats.entropy(p, axis=-1), rtol=1e-5
  )
  expected_ce = -(p * np.log(q)).sum(-1)
  np.testing.assert_allclose(klax.cross_entropy_logits(p_logits, q_logits), expected_ce, rtol=1e-5)


def test_minus_infinity_logits_are_zero_probabilities_without_nan():
  p_logits = jnp.array([0.0, -jnp.inf, 1.0])
  q_logits = jnp.array([0.5, 2.0, -1.0])
  p = scipy.special.softmax(np.array([0.0, -np.inf, 1.0]))
  q = scipy.special.softmax(np.array([0.5, 2.0, -1.0]))
  np.testing.assert_allclose(
    klax.kl_divergence_logits(p_logits, q_logits), scipy.stats.entropy(p, q), rtol=1e-5
  )
  np.testing.assert_allclose(klax.entropy_logits(p_logits), scipy.stats.entropy(p), rtol=1e-5)
  for fn in (klax.kl_divergence_logits, klax.cross_entropy_logits):
    grads = jax.grad(fn, argnums=(0, 1))(p_logits, q_logits)
    chex.assert_tree_all_finite(grads)
  chex.assert_tree_all_finite(jax.grad(klax.entropy_logits)(p_logits))


def test_gradients_finite_at_zero_probabilities():
  p = jnp.array([0.0, 0.25, 0.75])
  q = jnp.array([0.0, 0.5, 0.5])
  for fn in (klax.kl_divergence_probs, klax.cross_entropy_probs):
    chex.assert_tree_all_finite(jax.grad(fn, argnums=(0, 1))(p, q))
  chex.assert_tree_all_finite(jax.grad(klax.entropy_probs)(p))


def test_logit_gradients_match_analytic_formula():
  # ∂KL(softmax(a) ‖ softmax(b)) / ∂b = softmax(b) − softmax(a).
  a = jnp.array([0.3, -1.0, 2.0])
  b = jnp.array([1.0, 0.0, -0.5])
  grad_b = jax.grad(klax.kl_divergence_logits, argnums=1)(a, b)
  np.testing.assert_allclose(grad_b, jax.nn.softmax(b) - jax.nn.softmax(a), atol=1e-6)


def test_where_mask_excludes_entries():
  p_logits = jnp.array([0.1, 0.7, 99.0, -0.3])
  q_logits = jnp.array([1.0, -0.2, -99.0, 0.4])
  mask = jnp.array([True, True, False, True])
  keep = np.array([0, 1, 3])
  expected = klax.kl_divergence_logits(p_logits[keep], q_logits[keep])
  np.testing.assert_allclose(
    klax.kl_divergence_logits(p_logits, q_logits, where=mask), expected, rtol=1e-6
  )
  p = jnp.array([0.5, 0.5, 7.0])
  q = jnp.array([0.25, 0.75, -1.0])
  np.testing.assert_allclose(
    klax.kl_divergence_probs(p, q, where=jnp.array([True, True, False])),
    scipy.stats.entropy([0.5, 0.5], [0.25, 0.75]),
    rtol=1e-6,
  )


@pytest.mark.parametrize(
  "fn, nargs",
  [
    (klax.kl_divergence_probs, 2),
    (klax.cross_entropy_probs, 2),
    (klax.entropy_probs, 1),
    (klax.kl_divergence_logits, 2),
    (klax.cross_entropy_logits, 2),
    (klax.entropy_logits, 1),
  ],
)
def test_jit_vmap_grad(fn, nargs):
  rng = np.random.default_rng(4)
  is_logits = "logits" in fn.__name__
  make = (
    (lambda s: rng.normal(size=s).astype(np.float32))
    if is_logits
    else (lambda s: _random_probs(rng, s).astype(np.float32))
  )
  args = [jnp.asarray(make((6, 5))) for _ in range(nargs)]
  eager = fn(*args)
  np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(*args), eager, rtol=1e-6)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(nargs)))(*args)
  chex.assert_tree_all_finite(grads)
  # Finite differences along a direction that stays inside the domain.
  if is_logits:
    jax.test_util.check_grads(
      lambda *a: jnp.sum(fn(*a)), args, order=1, modes=["rev"], atol=2e-2, rtol=2e-2
    )


def test_low_precision_inputs_are_promoted():
  p = jnp.array([0.25, 0.75], jnp.bfloat16)
  q = jnp.array([0.5, 0.5], jnp.float16)
  out = klax.kl_divergence_probs(p, q)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, scipy.stats.entropy([0.25, 0.75], [0.5, 0.5]), rtol=1e-3)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="`p` and `q` must have the same shape"):
    klax.kl_divergence_probs(jnp.ones(3) / 3, jnp.ones(4) / 4)
  with pytest.raises(TypeError, match="`q` must have a floating-point dtype"):
    klax.kl_divergence_probs(jnp.array([0.5, 0.5]), jnp.array([1, 0]))
  with pytest.raises(TypeError, match="`p` must be an array of floats"):
    klax.entropy_probs("abc")
  with pytest.raises(ValueError, match="`axis`=3 is out of range"):
    klax.entropy_logits(jnp.zeros((2, 2)), axis=3)
  with pytest.raises(ValueError, match="`p` must hold probabilities"):
    klax.kl_divergence_probs(jnp.array([-0.5, 1.5]), jnp.array([0.5, 0.5]))
  with pytest.raises(ValueError, match="`q` must hold probabilities"):
    klax.cross_entropy_probs(jnp.array([0.5, 0.5]), jnp.array([0.5, 0.6]))


def test_invalid_probabilities_inside_jit_give_nan():
  out = jax.jit(klax.kl_divergence_probs)(
    jnp.array([[-0.5, 1.5], [0.5, 0.5]]), jnp.array([[0.5, 0.5], [0.5, 0.5]])
  )
  assert jnp.isnan(out[0]) and out[1] == 0.0
  assert jnp.isnan(jax.jit(klax.entropy_probs)(jnp.array([0.2, 0.2])))


def _weights(n):
  return hnp.arrays(np.float64, n, elements=st.floats(0.0, 10.0)).filter(lambda a: a.sum() > 1e-3)


_weight_pairs = st.integers(2, 8).flatmap(lambda n: st.tuples(_weights(n), _weights(n)))


def _normalise(a):
  return (a / a.sum()).astype(np.float32)


@given(_weight_pairs)
def test_properties_nonnegative_gibbs_decomposition_pinsker(weights):
  p, q = _normalise(weights[0]), _normalise(weights[1] + 1e-3)
  kl = float(klax.kl_divergence_probs(p, q))
  assert kl >= -1e-6  # Non-negativity (Gibbs' inequality: H(p, q) >= H(p)).
  h, ce = float(klax.entropy_probs(p)), float(klax.cross_entropy_probs(p, q))
  assert ce >= h - 1e-5
  np.testing.assert_allclose(ce, h + kl, rtol=1e-4, atol=1e-5)  # H(p, q) = H(p) + KL(p ‖ q).
  total_variation = 0.5 * np.abs(p - q).sum()
  assert total_variation <= np.sqrt(max(kl, 0.0) / 2) + 1e-3  # Pinsker.
  assert abs(float(klax.kl_divergence_probs(p, p))) < 1e-6  # Zero when p = q.


@given(hnp.arrays(np.float32, st.integers(2, 8), elements=st.floats(-20, 20, width=32)))
def test_property_zero_iff_equal_logits(logits):
  assert abs(float(klax.kl_divergence_logits(logits, logits))) < 1e-5
  shifted = logits.copy()
  shifted[0] += 1.0
  p = scipy.special.softmax(logits.astype(np.float64))
  q = scipy.special.softmax(shifted.astype(np.float64))
  expected = scipy.stats.entropy(p, q)  # > 0 since q != p, though possibly below float32 rounding.
  got = float(klax.kl_divergence_logits(logits, shifted))
  assert got >= -1e-7
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)


def test_near_identical_rows_are_exact_in_any_layout_beside_far_ones():
  # Rows of 50 outcomes along axis 1 of a (4, 50, 9) batch; odd columns nearly equal (KL ~ 1e-7),
  # even ones far apart. Reference: float64 scipy on the float32 logits.
  rng = np.random.default_rng(7)
  p_logits = (2 * rng.normal(size=(4, 50, 9))).astype(np.float32)
  noise = np.where(np.arange(9) % 2, 1e-3, 1.0) * rng.normal(size=(4, 50, 9))
  q_logits = (p_logits + noise).astype(np.float32)
  where = np.ones((4, 50, 9), bool)
  where[:, :5, :] = False  # The first five outcomes are masked out.
  p = scipy.special.softmax(np.where(where, p_logits.astype(np.float64), -np.inf), axis=1)
  q = scipy.special.softmax(np.where(where, q_logits.astype(np.float64), -np.inf), axis=1)
  expected = scipy.special.rel_entr(p, q).sum(axis=1)
  got = klax.kl_divergence_logits(p_logits, q_logits, axis=1, where=where)
  assert expected[:, 1::2].max() < 1e-5 and expected[:, ::2].min() > 0.1
  np.testing.assert_allclose(got, expected, rtol=2e-5)
  np.testing.assert_allclose(
    jax.jit(klax.kl_divergence_logits, static_argnames="axis")(p_logits, q_logits, axis=1),
    scipy.special.rel_entr(
      scipy.special.softmax(p_logits.astype(np.float64), axis=1),
      scipy.special.softmax(q_logits.astype(np.float64), axis=1),
    ).sum(axis=1),
    rtol=1e-4,
  )


def test_large_batches_in_cpu_row_blocks_match_float64_scipy():
  # 96 rows of 40 outcomes: on CPU these go through kl_divergence_logits in blocks of 32 rows.
  # Near-identical, far, -inf and masked rows mixed; reference: float64 scipy.
  from klax import _logits

  assert _logits._block_size((3, 32, 40), -1) == 32
  rng = np.random.default_rng(11)
  p_logits = (2 * rng.normal(size=(3, 32, 40))).astype(np.float32)
  noise = np.where(np.arange(32)[:, None] % 2, 1e-3, 1.0) * rng.normal(size=(3, 32, 40))
  q_logits = (p_logits + noise).astype(np.float32)
  p_logits[0, 4, :3] = -np.inf  # Probability 0 under p: contributes nothing.
  q_logits[1, 6, 7] = -np.inf  # p > 0 = q: +inf.
  where = np.arange(40) >= 2  # Broadcast over rows: the first two outcomes are left out.

  def reference(mask):
    p64 = np.where(mask, p_logits.astype(np.float64), -np.inf)
    q64 = np.where(mask, q_logits.astype(np.float64), -np.inf)
    p, q = scipy.special.softmax(p64, axis=-1), scipy.special.softmax(q64, axis=-1)
    return scipy.special.rel_entr(p, q).sum(axis=-1)

  for mask, kwargs in ((np.ones(40, bool), {}), (where, {"where": where})):
    expected = reference(mask)
    got = jax.jit(klax.kl_divergence_logits)(p_logits, q_logits, **kwargs)
    assert np.isinf(got[1, 6]) and np.isinf(expected[1, 6])
    finite = np.isfinite(expected)
    assert expected[finite].min() < 1e-5  # Near-identical rows are among them.
    np.testing.assert_allclose(np.asarray(got)[finite], expected[finite], rtol=2e-5)
  # Gradients: finite at the -inf logits, and ∂KL/∂b = softmax(b) − softmax(a) row by row.
  a, b = jnp.asarray(p_logits), jnp.asarray(q_logits).at[1, 6, 7].set(0.0)
  grad_b = jax.grad(lambda b: jnp.sum(klax.kl_divergence_logits(a, b)))(b)
  chex.assert_tree_all_finite(grad_b)
  np.testing.assert_allclose(grad_b, jax.nn.softmax(b) - jax.nn.softmax(a), atol=1e-6)
  # vmap over the leading axis gives the same rows as the batched call.
  np.testing.assert_allclose(
    jax.vmap(klax.kl_divergence_logits)(a, b), klax.kl_divergence_logits(a, b), rtol=1e-6
  )
