"""Differential tests of the discrete-array functions against 40-digit mpmath and float64 scipy.

Each hypothesis example is a small batch of rows drawn from a wide domain: logits from −1e4 to
1e4 and exactly −inf, +inf and NaN; masks that leave some rows empty; q's close to p (the KL
down to 1e-14, where cancellation lives); probabilities with zeros, NaN and rows that do not sum
to one; float16, bfloat16, float32 and float64. The reference is written from the definitions
alone (never from klax), with the documented edge values:

- NaN or +inf in a row (inside the mask) → NaN;
- a row where p has no outcome (all −inf or masked out) → 0, an empty sum;
- q with no outcome (p has one) → +inf; p > 0 = q at an outcome → +inf (KL, cross-entropy).

Shapes are fixed per test (one compilation each); values are drawn.
"""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import klax

mpmath.mp.dps = 40
ROWS, OUTCOMES = 4, 6
LOW_PRECISION = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}


def _mp_lse(values):
  finite = [mpmath.mpf(v) for v in values if v != -math.inf]
  if not finite:
    return -mpmath.inf
  top = max(finite)
  return top + mpmath.log(sum(mpmath.exp(v - top) for v in finite))


def _mp_centred(values):
  top = max((mpmath.mpf(v) for v in values if v != -math.inf), default=mpmath.mpf(0))
  return [v if v == -math.inf else mpmath.mpf(v) - top for v in values]


def _reference_row(kind, a, b, mask):
  """KL / entropy / cross-entropy of one row of logits, in 40-digit arithmetic."""
  a = [float(x) for x, keep in zip(a, mask, strict=True) if keep]
  b = [float(x) for x, keep in zip(b, mask, strict=True) if keep] if b is not None else a
  if any(math.isnan(x) or x == math.inf for x in a + b):
    return math.nan
  if all(x == -math.inf for x in a):
    return 0.0
  if kind != "entropy" and all(x == -math.inf for x in b):
    return math.inf
  # Centre each side first (exact in 40 digits): logits of 1e20 would otherwise use up half of them.
  a, b = (_mp_centred(x) for x in (a, b))
  lse_a, lse_b = _mp_lse(a), _mp_lse(b)
  total = mpmath.mpf(0)
  for x, y in zip(a, b, strict=True):
    if x == -math.inf:
      continue  # p = 0: no contribution.
    if y == -math.inf and kind != "entropy":
      return math.inf
    log_p, log_q = x - lse_a, y - lse_b
    p = mpmath.exp(log_p)
    total += p * (log_p - log_q) if kind == "kl" else -p * log_q
  return float(total)


def _scale(a, b, mask):
  """The size of the O(1) terms a float32 evaluation combines: max |logit difference| + 1."""
  keep = np.asarray(mask, bool) & np.isfinite(a) & np.isfinite(b)
  return 1.0 + (float(np.max(np.abs(a[keep] - b[keep]))) if keep.any() else 0.0)


# Logits: mostly moderate, some huge, and the special values, each with positive probability.
_logit = st.one_of(
  st.floats(-30, 30, width=32),
  st.floats(-1e4, 1e4, width=32),
  st.sampled_from([-math.inf, -math.inf, math.nan, math.inf, 0.0]),
)
_logit_rows = hnp.arrays(np.float32, (ROWS, OUTCOMES), elements=_logit)
_masks = st.one_of(st.none(), hnp.arrays(np.bool_, (ROWS, OUTCOMES)))
_FUNCTIONS = {
  "kl": jax.jit(lambda a, b, w: klax.kl_divergence_logits(a, b, where=w)),
  "cross_entropy": jax.jit(lambda a, b, w: klax.cross_entropy_logits(a, b, where=w)),
  "entropy": jax.jit(lambda a, b, w: klax.entropy_logits(a, where=w)),
}


def _check_rows(kind, a, b, mask, got, rtol):
  full_mask = np.ones(a.shape, bool) if mask is None else mask
  for i in range(a.shape[0]):
    expected = _reference_row(kind, a[i], None if kind == "entropy" else b[i], full_mask[i])
    context = f"{kind} row {i}: p={a[i].tolist()} q={b[i].tolist()} mask={full_mask[i].tolist()}"
    if not math.isfinite(expected):
      assert (np.isnan(got[i]) and math.isnan(expected)) or got[i] == expected, context
      continue
    scale = _scale(a[i], a[i] if kind == "entropy" else b[i], full_mask[i])
    # float32: 1e-5 relative, plus rounding of the O(scale) terms the formula sums.
    tolerance = rtol * abs(expected) + 3e-7 * scale
    assert abs(got[i] - expected) <= tolerance, f"{context}: got {got[i]}, exact {expected}"


@pytest.mark.parametrize("kind", list(_FUNCTIONS))
@given(a=_logit_rows, b=_logit_rows, mask=_masks)
def test_logits_functions_against_mpmath_on_wide_domains(kind, a, b, mask):
  got = np.asarray(_FUNCTIONS[kind](a, b, mask))
  assert got.shape == (ROWS,) and got.dtype == np.float32
  _check_rows(kind, a, b, mask, got, rtol=1e-5)


_BLOCK_ROWS = 96  # More than 64 rows: the CPU path in blocks of rows, and refinement groups.
_kl_jit = jax.jit(klax.kl_divergence_logits)


@given(
  a=hnp.arrays(np.float32, (_BLOCK_ROWS, OUTCOMES), elements=_logit),
  noise=hnp.arrays(np.float32, (_BLOCK_ROWS, OUTCOMES), elements=st.floats(-1, 1, width=32)),
  scales=hnp.arrays(np.float32, (_BLOCK_ROWS, 1), elements=st.sampled_from([0.0, 1e-5, 1e-2, 3])),
)
@settings(max_examples=10)
def test_kl_logits_in_cpu_blocks_keeps_every_row_exact(a, noise, scales):
  # Near, far, −inf and NaN rows side by side: each row's value is its own (a NaN row stays NaN
  # and does not disturb the refinement of its neighbours).
  b = np.where(np.isfinite(a), a + scales * noise, noise).astype(np.float32)
  got = np.asarray(_kl_jit(a, b))
  _check_rows("kl", a, b, None, got, rtol=1e-4)


_near_cases = st.tuples(
  hnp.arrays(np.float32, (ROWS, OUTCOMES), elements=st.floats(-20, 20, width=32)),
  hnp.arrays(np.float32, (ROWS, OUTCOMES), elements=st.floats(-1, 1, width=32)),
  st.sampled_from([1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]),
  hnp.arrays(np.bool_, (ROWS, OUTCOMES)),  # where p's logit is −inf (top-k / masked policies)
  st.booleans(),  # also the same entries of q
)


@given(_near_cases)
def test_kl_logits_of_near_identical_rows_is_relatively_exact(case):
  # The class of item 1 of issue 15: KL ≈ 0, p with −inf logits where q keeps some mass.
  a, z, epsilon, hidden, hide_q_too = case
  b = (a + np.float32(epsilon) * z).astype(np.float32)
  hidden[:, 0] = False  # p keeps at least one outcome.
  a = np.where(hidden, -np.inf, a).astype(np.float32)
  if hide_q_too:
    b = np.where(hidden, -np.inf, b).astype(np.float32)
  got = np.asarray(_FUNCTIONS["kl"](a, b, None))
  for i in range(ROWS):
    expected = _reference_row("kl", a[i], b[i], np.ones(OUTCOMES, bool))
    # d = a − b and its mean are rounded (δt ≈ 4 ε |d|): KL ≈ Var(t)/2 moves by √(2 KL) δt + δt².
    support = np.isfinite(a[i])
    rounding = 4 * np.finfo(np.float32).eps * float(np.max(np.abs(a[i][support] - b[i][support])))
    expected = max(expected, 0.0)  # 40 digits leave |error| < 1e-38: below float32's range.
    tolerance = 1e-4 * expected + 2 * math.sqrt(expected) * rounding + rounding**2
    tolerance += np.finfo(np.float32).tiny  # Smaller values are flushed to zero by XLA.
    assert got[i] >= 0
    assert abs(got[i] - expected) <= tolerance, (a[i], b[i], got[i], expected)


@given(
  a=hnp.arrays(np.float32, (ROWS, OUTCOMES), elements=st.floats(-20, 20, width=32)),
  z=hnp.arrays(np.float32, (ROWS, OUTCOMES), elements=st.floats(-1, 1, width=32)),
  shift=st.sampled_from([1e2, 1e4, 1e5, -1e6, 1e7]),
  epsilon=st.sampled_from([0.0, 1e-4, 1e-2, 1.0]),
)
def test_kl_logits_is_blind_to_constant_shifts_of_either_side(a, z, shift, epsilon):
  # A constant added to a row of logits changes no probability; KL ≈ 0 must not turn into the
  # rounding of the constant (a + 1e5 gave 0.0156 for an exact 0). Reference: the float32 inputs.
  b = (a + np.float32(shift) + np.float32(epsilon) * z).astype(np.float32)
  got = np.asarray(_FUNCTIONS["kl"](a, b, None))
  for i in range(ROWS):
    expected = max(_reference_row("kl", a[i], b[i], np.ones(OUTCOMES, bool)), 0.0)
    centred = (a[i] - a[i].max()) - (b[i] - b[i].max())
    # δt: ε of the centred differences, and ε² |shift| (the exact remainder of a − b, rounded).
    eps = float(np.finfo(np.float32).eps)
    rounding = 4 * eps * float(np.max(np.abs(centred))) + 4 * eps**2 * abs(shift)
    tolerance = 1e-4 * expected + 2 * math.sqrt(expected) * rounding + rounding**2
    # ε⁴: Σ p = 1 ± ε leaves t ≈ ε² |t| after centring, a KL of about ε⁴ for p = q.
    tolerance += float(np.finfo(np.float32).eps) ** 4
    if expected >= 1e-2:  # The plain form: its documented absolute error.
      tolerance += 3e-7 * (1 + float(np.max(np.abs(centred))))
    assert abs(got[i] - expected) <= tolerance, (a[i], b[i], got[i], expected)


def test_grid_sums_are_blind_to_constants_added_to_the_log_densities():
  grid = np.linspace(-10.0, 10.0, 2001).astype(np.float32)
  log_p = scipy.stats.norm.logpdf(grid).astype(np.float32)
  for shift in (1e2, 1e4, 1e5):
    shifted = (log_p + np.float32(shift)).astype(np.float32)
    got = float(klax.kl_divergence_grid(shifted, log_p, grid))
    expected = _reference_row("kl", shifted, log_p, np.ones(grid.shape, bool))
    assert 0 <= got and abs(got - expected) <= 1e-4 * expected + 1e-9, (shift, got, expected)


def test_gradients_are_finite_and_right_where_the_value_is_finite():
  # ∂KL/∂b = softmax(b) − softmax(a) on the unmasked outcomes, including p with −inf entries and
  # empty rows (zero gradients).
  rng = np.random.default_rng(0)
  a = rng.normal(size=(ROWS, OUTCOMES)).astype(np.float32)
  b = (a + 1e-3 * rng.normal(size=a.shape)).astype(np.float32)
  a[0, :2] = -np.inf
  a[1] = -np.inf  # An empty p: KL 0, gradient 0.
  mask = np.ones(a.shape, bool)
  mask[2, 3:] = False
  mask[3] = False  # Masked out entirely.
  grad_a, grad_b = jax.jit(
    jax.grad(lambda a, b: klax.kl_divergence_logits(a, b, where=mask).sum(), (0, 1))
  )(a, b)
  assert np.all(np.isfinite(grad_a)) and np.all(np.isfinite(grad_b))
  for i in range(ROWS):
    keep = mask[i]
    if i in (1, 3):
      np.testing.assert_array_equal(grad_b[i], 0.0)
      np.testing.assert_array_equal(grad_a[i], 0.0)
      continue
    p = scipy.special.softmax(np.where(keep, a[i], -np.inf).astype(np.float64))
    q = scipy.special.softmax(np.where(keep, b[i], -np.inf).astype(np.float64))
    np.testing.assert_allclose(grad_b[i], q - p, atol=2e-6)
  for fn in (klax.entropy_logits, lambda x: klax.cross_entropy_logits(x, b)):
    grads = jax.jit(jax.grad(lambda x, fn=fn: fn(x).sum()))(a)
    assert np.all(np.isfinite(grads))


# Probabilities: rows from gamma weights with zeros, then damaged (NaN, negative, off-sum).
_weight = st.one_of(st.floats(0, 10), st.just(0.0), st.floats(1e-30, 1e-20))
_prob_rows = hnp.arrays(np.float64, (ROWS, OUTCOMES), elements=_weight)
_damage = st.sampled_from(["none", "none", "nan", "negative", "off_sum"])


def _as_probs(weights, damage, row):
  weights = weights.copy()
  weights[:, 0] += 1e-3
  probs = weights / weights.sum(-1, keepdims=True)
  if damage == "nan":
    probs[row, 1] = np.nan
  elif damage == "negative":
    probs[row, 1] = -0.25
    probs[row, 2] += 0.25
  elif damage == "off_sum":
    probs[row] *= 1.01
  return probs


def _reference_probs(kind, p, q):
  def valid(x):
    return bool(np.all(x >= 0) and abs(x.sum() - 1) <= 1e-4)

  if not (valid(p) and (kind == "entropy" or valid(q))):
    return math.nan
  if kind == "entropy":
    return float(scipy.stats.entropy(p))
  kl = float(np.sum(scipy.special.rel_entr(p, q)))
  return kl if kind == "kl" else float(scipy.stats.entropy(p)) + kl


_PROB_FUNCTIONS = {
  "kl": jax.jit(klax.kl_divergence_probs),
  "cross_entropy": jax.jit(klax.cross_entropy_probs),
  "entropy": jax.jit(lambda p, q: klax.entropy_probs(p)),
}


@pytest.mark.parametrize("kind", list(_PROB_FUNCTIONS))
@given(
  weights=st.tuples(_prob_rows, _prob_rows),
  damage=st.tuples(_damage, _damage),
  rows=st.tuples(st.integers(0, ROWS - 1), st.integers(0, ROWS - 1)),
)
def test_probs_functions_against_scipy_with_invalid_rows_as_nan_inside_jit(
  kind, weights, damage, rows
):
  p64 = _as_probs(weights[0], damage[0], rows[0])
  q64 = _as_probs(weights[1], damage[1], rows[1])
  # XLA flushes float32 subnormals (below 1.2e-38) to zero, as documented: draw normal numbers.
  p, q = (np.where(x < np.finfo(np.float32).tiny, 0.0, x).astype(np.float32) for x in (p64, q64))
  got = np.asarray(_PROB_FUNCTIONS[kind](p, q))
  assert got.shape == (ROWS,) and got.dtype == np.float32
  for i in range(ROWS):
    expected = _reference_probs(kind, p[i].astype(np.float64), q[i].astype(np.float64))
    if not math.isfinite(expected):
      assert (np.isnan(got[i]) and math.isnan(expected)) or got[i] == expected, (p[i], q[i])
    else:
      np.testing.assert_allclose(got[i], expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", list(LOW_PRECISION))
@given(a=hnp.arrays(np.float32, (ROWS, 32), elements=st.floats(-8, 8, width=32)))
@settings(max_examples=10)
def test_low_precision_is_promoted_and_a_low_precision_softmax_is_valid(dtype, a):
  # A softmax computed in float16/bfloat16 sums to 1 only within that dtype's epsilon.
  low = LOW_PRECISION[dtype]
  p_low = jax.nn.softmax(jnp.asarray(a, low), axis=-1)
  q_low = jax.nn.softmax(jnp.asarray(a[::-1], low), axis=-1)
  got = _LOW_PRECISION_KL["probs"](p_low, q_low)
  assert got.dtype == jnp.float32
  p, q = np.asarray(p_low, np.float64), np.asarray(q_low, np.float64)
  np.testing.assert_allclose(got, np.sum(scipy.special.rel_entr(p, q), -1), rtol=1e-4, atol=1e-6)
  logits_got = _LOW_PRECISION_KL["logits"](jnp.asarray(a, low), jnp.asarray(a[::-1], low))
  assert logits_got.dtype == jnp.float32
  a_low = np.asarray(jnp.asarray(a, low), np.float64)
  for i in range(ROWS):
    expected = _reference_row("kl", a_low[i], a_low[::-1][i], np.ones(32, bool))
    assert abs(float(logits_got[i]) - expected) <= 1e-5 * expected + 3e-7 * 17


_LOW_PRECISION_KL = {
  "probs": jax.jit(klax.kl_divergence_probs),
  "logits": jax.jit(klax.kl_divergence_logits),
}


def test_rows_with_nothing_inside_the_mask_are_zero_everywhere():
  # One documented value for an empty row, the same for every function: 0 (an empty sum).
  logits = jnp.zeros((2, 3))
  probs = jnp.full((2, 3), 1 / 3)
  empty = jnp.array([[False] * 3, [True] * 3])
  for fn, args in [
    (klax.kl_divergence_logits, (logits, logits)),
    (klax.cross_entropy_logits, (logits, logits)),
    (klax.entropy_logits, (logits,)),
    (klax.kl_divergence_probs, (probs, probs)),
    (klax.cross_entropy_probs, (probs, probs)),
    (klax.entropy_probs, (probs,)),
  ]:
    value, grads = jax.jit(
      jax.value_and_grad(lambda *a, fn=fn: fn(*a, where=empty)[0], range(len(args)))
    )(*args)
    assert float(value) == 0.0 and not np.signbit(value), fn.__name__
    for g in grads:
      np.testing.assert_array_equal(g, 0.0)


@given(
  log_p=hnp.arrays(np.float32, 9, elements=st.floats(-50, 5, width=32)),
  log_q=hnp.arrays(np.float32, 9, elements=st.floats(-50, 5, width=32)),
  special=st.sampled_from(["none", "nan_value", "nan_point", "q_zero", "p_zero", "reverse"]),
)
def test_grid_against_scipy_and_numpy_trapezoid(log_p, log_q, special):
  grid = np.linspace(-4.0, 4.0, 9).astype(np.float32)
  if special == "nan_value":
    log_p[3] = np.nan
  elif special == "nan_point":
    grid[5] = np.nan
  elif special == "q_zero":
    log_q[4] = -np.inf
  elif special == "p_zero":
    log_p[4] = -np.inf
  elif special == "reverse":
    grid = grid[::-1].copy()  # Any order: the trapezoid rule over the sorted points.
  normalized = klax.kl_divergence_grid(log_p, log_q, grid)
  integrated = klax.kl_divergence_grid(log_p, log_q, grid, normalize=False)
  p, q = np.exp(log_p.astype(np.float64)), np.exp(log_q.astype(np.float64))
  if special in ("nan_value", "nan_point"):
    assert np.isnan(normalized) and np.isnan(integrated)
    return
  expected = scipy.stats.entropy(p, q)
  order = np.argsort(grid)
  integrand = scipy.special.rel_entr(p, q)[order]
  expected_integral = np.trapezoid(integrand, grid.astype(np.float64)[order])
  if special == "q_zero" and p[4] > 0:
    assert normalized == np.inf and integrated == np.inf
    return
  np.testing.assert_allclose(normalized, expected, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(integrated, expected_integral, rtol=2e-5, atol=1e-5)
