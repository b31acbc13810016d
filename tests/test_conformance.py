"""Conformance with PyTorch's KL tests (test/distributions/test_distributions.py, class TestKL).

PyTorch's facts, ported: the 4 × 4 `pairwise` parameter grids of `TestKL.setUp` (p varies along
columns, q along rows, so every parameter pair is met), its Monte Carlo rule (`test_kl_monte_carlo`:
batches of 10⁴ samples until max |E − KL| / (1 + E) < 0.1, NaN entries ignored), its Bregman
rule for exponential families (`test_kl_exponential_family`, at torch's float32 tolerance
rtol 1.3e-6, atol 1e-5), `test_kl_infinite`, `test_kl_edgecases` and the multivariate-normal
tests. The references are not klax: Monte Carlo with scipy's samplers and densities in float64
(at most 10⁶ samples, where PyTorch allows 10⁷: stricter, never looser), log-normalisers and
their gradients (the mean statistics) in numpy/scipy, and the numpy Gaussian KL. Every pair of
PyTorch's `finite_examples` that klax covers is here (TFP types, and distrax types where distrax
has the family); the pairs klax refuses are issue 19's. Every KL is computed in one jitted call
(`kl`), so the module compiles once.
"""

import distrax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
from tensorflow_probability.substrates import jax as tfp
from test_conformance_families import FAMILIES
from test_conformance_families import MultivariateNormal
from test_conformance_families import cb_log_norm
from test_conformance_families import pairwise

import klax

tfd = tfp.distributions
PRECISION, SAMPLES_PER_BATCH, MAX_SAMPLES = 0.1, 10_000, 1_000_000
RTOL32, ATOL32 = 1.3e-6, 1e-5  # torch.testing's defaults for float32.
LIBS = ("tfp", "distrax")

# PyTorch's `finite_examples` that klax covers (p's family, q's family).
FINITE = [
  *[(f, f) for f in ("bernoulli", "beta", "binomial30", "binomial_vectorized_count")],
  *[(f, f) for f in ("categorical", "cauchy", "chi2", "dirichlet", "exponential", "gamma")],
  *[(f, f) for f in ("gumbel", "halfnormal", "independent", "laplace", "lognormal", "normal")],
  *[(f, f) for f in ("onehotcategorical", "pareto", "poisson", "continuous_bernoulli")],
  ("chi2", "exponential"),
  ("chi2", "gamma"),
  ("exponential", "chi2"),
  ("exponential", "gamma"),
  ("gamma", "chi2"),
  ("gamma", "exponential"),
  ("laplace", "normal"),
  ("normal", "laplace"),
]
MC_CASES = [(a, b, lib) for a, b in FINITE for lib in LIBS if FAMILIES[a][lib] and FAMILIES[b][lib]]
# torch test_kl_exponential_family: same-type pairs of `finite_examples` that are torch
# ExponentialFamily classes; binomial30, categorical and geometric (not torch exponential
# families; geometric is not in `finite_examples` and takes Bernoulli's parameters) extend its
# rule to pairs klax registers or overrides.
BREGMAN = ["bernoulli", "beta", "chi2", "dirichlet", "exponential", "gamma", "normal", "poisson"]
BREGMAN += ["continuous_bernoulli", "binomial30", "categorical", "geometric"]
BREGMAN_CASES = [(f, lib) for f in BREGMAN for lib in LIBS if FAMILIES[f][lib]]

JOBS = {}  # key: (build p, p's arrays, build q, q's arrays), all evaluated by `kl`.
for _p, _q, _lib in MC_CASES + [(f, f, lib) for f, lib in BREGMAN_CASES]:
  (_args_p, _), (_, _args_q) = pairwise(_p), pairwise(_q)
  JOBS[_p, _q, _lib] = (FAMILIES[_p][_lib], _args_p, FAMILIES[_q][_lib], _args_q)


def _job(key, build_p, args_p, build_q, args_q):
  JOBS[key] = (build_p, [np.asarray(a) for a in args_p], build_q, [np.asarray(a) for a in args_q])


for _lib, _mod in (("tfp", tfd), ("distrax", distrax)):
  # torch TestKL.test_kl_infinite (the pairs klax covers; its batched Categorical p against an
  # unbatched q), then test_kl_edgecases (0): one call per family.
  _bern, _cat = (lambda p, m=_mod: m.Bernoulli(probs=p)), (lambda p, m=_mod: m.Categorical(probs=p))
  _job(("inf", "bernoulli", _lib), _bern, [[0.0, 1.0]], _bern, [[1.0, 0.0]])
  _job(("inf", "categorical", _lib), _cat, [[[0.9, 0.1]] * 3], _cat, [[1.0, 0.0]])
  _job(("zero", "bernoulli", _lib), _bern, [[0.0, 1.0]], _bern, [[0.0, 1.0]])
  _job(("zero", "categorical", _lib), _cat, [[0.0, 1.0]], _cat, [[0.0, 1.0]])
# torch Pareto(scale 1, alpha 2) ‖ Pareto(scale 3, alpha 4); TFP's Pareto(concentration, scale).
_job(("inf", "pareto", "tfp"), tfd.Pareto, [2.0, 1.0], tfd.Pareto, [4.0, 3.0])


def _lower_cholesky(x):
  """torch's transform_to(constraints.lower_cholesky): strict lower part plus exp(diagonal)."""
  return np.tril(x, -1) + np.eye(x.shape[-1]) * np.exp(np.diagonal(x, 0, -2, -1))[..., None, :]


_TRIL = {"tfp": tfd.MultivariateNormalTriL, "distrax": distrax.MultivariateNormalTri}
_LOW = tfd.MultivariateNormalDiagPlusLowRankCovariance
_RNG = np.random.default_rng(0)
# torch test_kl_multivariate_normal: 5 instances in 4 dimensions (one batch of 5 here).
MVN_LOC = _RNG.standard_normal((2, 5, 4))
MVN_TRIL = _lower_cholesky(_RNG.standard_normal((2, 5, 4, 4)))
for _lib in LIBS:
  _job(
    ("mvn", _lib), _TRIL[_lib], [MVN_LOC[0], MVN_TRIL[0]], _TRIL[_lib], [MVN_LOC[1], MVN_TRIL[1]]
  )
# torch test_kl_lowrank_multivariate_normal: 5 instances, rank 3 in 4 dimensions.
LOW_LOC, LOW_W = _RNG.standard_normal((2, 5, 4)), _RNG.standard_normal((2, 5, 4, 3))
LOW_D = np.exp(_RNG.standard_normal((2, 5, 4)))
LOW_COV = LOW_W @ np.swapaxes(LOW_W, -1, -2) + LOW_D[..., None] * np.eye(4)
_low = [[LOW_LOC[k], LOW_D[k], LOW_W[k]] for k in range(2)]
_full = [[LOW_LOC[k], np.linalg.cholesky(LOW_COV[k])] for k in range(2)]
_job(("lowrank", "low-low"), _LOW, _low[0], _LOW, _low[1])
_job(("lowrank", "low-full"), _LOW, _low[0], _TRIL["tfp"], _full[1])
_job(("lowrank", "full-low"), _TRIL["tfp"], _full[0], _LOW, _low[1])
# torch test_kl_(lowrank_)multivariate_normal_batched(_broadcasted): a batch of 7, 3 dimensions.
BATCH_LOC = _RNG.standard_normal((2, 7, 3))
BATCH_TRIL = _lower_cholesky(_RNG.standard_normal((2, 7, 3, 3)))
BATCH_W, BATCH_D = _RNG.standard_normal((2, 7, 3, 2)), np.exp(_RNG.standard_normal((2, 7, 3)))
_tril_p = [BATCH_LOC[0], BATCH_TRIL[0]]
_job(("batch", "tril"), _TRIL["tfp"], _tril_p, _TRIL["tfp"], [BATCH_LOC[1], BATCH_TRIL[1]])
_job(("batch", "broadcast"), _TRIL["tfp"], _tril_p, _TRIL["tfp"], [BATCH_LOC[1], BATCH_TRIL[1, 0]])
_job(
  ("batch", "low"),
  _LOW,
  [BATCH_LOC[0], BATCH_D[0], BATCH_W[0]],
  _LOW,
  [BATCH_LOC[1], BATCH_D[1], BATCH_W[1]],
)


@pytest.fixture(scope="module")
def kl():
  """klax.kl_divergence of every job, in float32 (eagerly: one jit per job compiles slower)."""
  values = {}
  for key, (build_p, args_p, build_q, args_q) in JOBS.items():
    p, q = build_p(*map(jnp.float32, args_p)), build_q(*map(jnp.float32, args_q))
    value = np.asarray(klax.kl_divergence(p, q), np.float64)
    # torch TestKL.test_kl_shape: the broadcast batch shape.
    assert value.shape == jnp.broadcast_shapes(tuple(p.batch_shape), tuple(q.batch_shape)), key
    values[key] = value
  return values


def _mc_error(p_ref, q_ref, actual, seed):
  """torch's `test_kl_monte_carlo` loop on scipy samples: the worst error when it stops."""
  rng = np.random.default_rng(seed)
  numerator, denominator = 0.0, 0
  while denominator < MAX_SAMPLES:
    x = p_ref.rvs(size=(SAMPLES_PER_BATCH, *actual.shape), random_state=rng)
    numerator = numerator + (p_ref.logpdf(x) - q_ref.logpdf(x)).sum(0)
    denominator += SAMPLES_PER_BATCH
    expected = numerator / denominator
    error = np.abs(expected - actual) / (1 + expected)
    if np.nanmax(error) < PRECISION:
      break
  return np.nanmax(error), denominator


@pytest.mark.parametrize(("family_p", "family_q", "lib"), MC_CASES)
def test_kl_monte_carlo(kl, family_p, family_q, lib):
  # torch TestKL.test_kl_monte_carlo, pair (family_p, family_q) of `finite_examples`.
  (params_p, _), (_, params_q) = pairwise(family_p), pairwise(family_q)
  actual = kl[family_p, family_q, lib]
  assert np.all(np.isfinite(actual))
  p_ref, q_ref = FAMILIES[family_p]["ref"](*params_p), FAMILIES[family_q]["ref"](*params_q)
  error, used = _mc_error(p_ref, q_ref, actual, seed=0)
  assert error < PRECISION, f"KL({family_p}, {family_q}) off by {error} after {used} samples"


def _logit(p):
  return np.log(p) - np.log1p(-p)


def _cb_mean(lam):
  safe = np.where(lam == 0.5, 0.25, lam)
  return np.where(lam == 0.5, 0.5, safe / (2 * safe - 1) + 1 / (2 * np.arctanh(1 - 2 * safe)))


# Log-normaliser A, natural parameters η_k and mean statistics E[T_k] = ∂A/∂η_k of each family,
# from its ordinary parameters (a trailing event axis is summed over in ⟨·,·⟩). torch's
# `_kl_expfamily_expfamily` takes ∇A by autograd; here it is in closed form, in float64.
EXPFAM = {
  "bernoulli": lambda p: (-np.log1p(-p), [_logit(p)], [p]),
  "binomial30": lambda p: (-30 * np.log1p(-p), [_logit(p)], [30 * p]),
  "geometric": lambda p: (-np.log(p), [np.log1p(-p)], [(1 - p) / p]),
  "poisson": lambda lam: (lam, [np.log(lam)], [lam]),
  "exponential": lambda lam: (-np.log(lam), [-lam], [1 / lam]),
  "gamma": lambda a, b: (
    sp.gammaln(a) - a * np.log(b),
    [a - 1, -b],
    [sp.digamma(a) - np.log(b), a / b],
  ),
  "chi2": lambda k: EXPFAM["gamma"](k / 2, np.full_like(k, 0.5)),
  "beta": lambda a, b: (
    sp.betaln(a, b),
    [a - 1, b - 1],
    [sp.digamma(a) - sp.digamma(a + b), sp.digamma(b) - sp.digamma(a + b)],
  ),
  "dirichlet": lambda a: (
    sp.gammaln(a).sum(-1) - sp.gammaln(a.sum(-1)),
    [a - 1],
    [sp.digamma(a) - sp.digamma(a.sum(-1, keepdims=True))],
  ),
  "normal": lambda m, s: (m**2 / (2 * s**2) + np.log(s), [m / s**2, -0.5 / s**2], [m, m**2 + s**2]),
  "continuous_bernoulli": lambda lam: (
    -cb_log_norm(lam) - np.log1p(-lam),
    [_logit(lam)],
    [_cb_mean(lam)],
  ),
  "categorical": lambda probs: (np.zeros(probs.shape[:-1]), [np.log(probs)], [probs]),
}


def _bregman(family, params_p, params_q):
  """KL(p ‖ q) = A(η_q) − A(η_p) − ⟨η_q − η_p, ∇A(η_p)⟩."""
  (a_p, eta_p, mean_p), (a_q, eta_q, _) = EXPFAM[family](*params_p), EXPFAM[family](*params_q)
  inner = 0.0
  for e_p, e_q, m in zip(eta_p, eta_q, mean_p, strict=True):
    term = (e_q - e_p) * m
    inner = inner + (term.sum(-1) if term.ndim > a_p.ndim else term)
  return a_q - a_p - inner


@pytest.mark.parametrize(("family", "lib"), BREGMAN_CASES)
def test_kl_exponential_family(kl, family, lib):
  (params_p, _), (_, params_q) = pairwise(family), pairwise(family)
  expected = _bregman(family, params_p, params_q)
  np.testing.assert_allclose(kl[family, family, lib], expected, rtol=RTOL32, atol=ATOL32)


def test_kl_infinite_and_edge_cases(kl):
  # torch TestKL.test_kl_infinite and test_kl_edgecases, for the pairs klax covers.
  for key, value in kl.items():
    if key[0] == "inf":
      assert np.all(value == np.inf), (key, value)
    if key[0] == "zero":
      assert np.all(value == 0.0), (key, value)


def _kl_mvn(mu_a, cov_a, mu_b, cov_b):
  """The textbook Gaussian KL in numpy (as TFP mvn_tril_test's `_compute_non_batch_kl`)."""
  inv_b = np.linalg.inv(cov_b)
  diff = mu_b - mu_a
  k = mu_a.shape[-1]
  log_det_ratio = np.linalg.slogdet(cov_b)[1] - np.linalg.slogdet(cov_a)[1]
  return 0.5 * (np.trace(inv_b @ cov_a) + diff @ inv_b @ diff - k + log_det_ratio)


@pytest.mark.parametrize("lib", LIBS)
def test_kl_multivariate_normal(kl, lib):
  # torch TestKL.test_kl_multivariate_normal: the Monte Carlo rule on each of 5 instances.
  for i in range(5):
    refs = [MultivariateNormal(MVN_LOC[k, i], MVN_TRIL[k, i] @ MVN_TRIL[k, i].T) for k in range(2)]
    error, used = _mc_error(*refs, kl["mvn", lib][i], seed=i)
    assert error < PRECISION, f"instance {i}: off by {error} after {used} samples"


def test_kl_lowrank_multivariate_normal(kl):
  # torch TestKL.test_kl_lowrank_multivariate_normal: low-rank ‖ low-rank, low-rank ‖ full and
  # full ‖ low-rank within 0.1 of the full-covariance KL (here the numpy textbook form).
  for i in range(5):
    expected = _kl_mvn(LOW_LOC[0, i], LOW_COV[0, i], LOW_LOC[1, i], LOW_COV[1, i])
    for kind in ("low-low", "low-full", "full-low"):
      assert abs(kl["lowrank", kind][i] - expected) < PRECISION, (i, kind)


@pytest.mark.parametrize("kind", ["tril", "broadcast", "low"])
def test_kl_multivariate_normal_batched(kl, kind):
  # torch test_kl_multivariate_normal_batched(_broadcasted) and the low-rank batched test: the
  # KL of a batch of 7 is the KL of each member (here the numpy form), at torch's float32
  # tolerance.
  cov = BATCH_TRIL @ np.swapaxes(BATCH_TRIL, -1, -2)
  if kind == "low":
    cov = BATCH_W @ np.swapaxes(BATCH_W, -1, -2) + BATCH_D[..., None] * np.eye(3)
  members = [
    _kl_mvn(BATCH_LOC[0, b], cov[0, b], BATCH_LOC[1, b], cov[1, 0 if kind == "broadcast" else b])
    for b in range(7)
  ]
  np.testing.assert_allclose(kl["batch", kind], members, rtol=RTOL32, atol=ATOL32)
