"""Conformance with PyTorch's entropy tests (test/distributions/test_distributions.py).

PyTorch's facts, ported: the entropies its per-family tests state (`test_bernoulli`,
`test_categorical_2d` with issue gh-40553's −inf logits, `test_continuous_bernoulli`, at its atol
1e-4), its `test_entropy_monte_carlo` rule (the closed form within 0.2 absolute of −mean log p
over samples) and its `test_entropy_exponential_family` rule (the closed form equal, at torch's
float32 tolerance, to A(η) − ⟨η, ∇A(η)⟩ − E[log h(x)] from the log-normaliser). The parameters
are TestKL's `setUp` grids (`test_conformance_families`), for every family klax has an entropy
for, TFP and distrax types. References are not klax: scipy's samplers and densities in float64
with a fixed seed, and the numpy log-normalisers and mean statistics of `test_conformance`.
"""

import distrax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorflow_probability.substrates import jax as tfp
from test_conformance import ATOL32
from test_conformance import EXPFAM
from test_conformance import LIBS
from test_conformance import RTOL32
from test_conformance_families import FAMILIES
from test_conformance_families import pairwise

import klax

tfd = tfp.distributions
MC_SAMPLES, MC_ATOL = 60_000, 0.2  # torch: 60,000 samples (float64), atol 0.2.
TORCH_ATOL = 1e-4

BERNOULLI_P = [0.7, 0.2, 0.4]  # torch test_bernoulli's p.
CATEGORICAL_P = [[0.1, 0.2, 0.3], [0.5, 0.3, 0.2]]  # torch test_categorical_2d's p.


@pytest.mark.parametrize("mod", [tfd, distrax])
def test_stated_entropies(mod):
  # torch test_bernoulli: p, then p = 0 and the scalar s = 0.3.
  entropy = klax.entropy(mod.Bernoulli(probs=jnp.asarray(BERNOULLI_P)))
  np.testing.assert_allclose(entropy, [0.6108, 0.5004, 0.6730], atol=TORCH_ATOL, rtol=0)
  assert float(klax.entropy(mod.Bernoulli(probs=jnp.asarray([0.0])))[0]) == 0.0
  np.testing.assert_allclose(klax.entropy(mod.Bernoulli(probs=0.3)), 0.6108, atol=TORCH_ATOL)
  # torch test_categorical_2d: unnormalised p, a point mass, and −inf logits (gh-40553).
  p = np.asarray(CATEGORICAL_P, np.float32)
  p = p / p.sum(-1, keepdims=True)  # torch normalises probs; TFP and distrax expect them so.
  entropy = klax.entropy(mod.Categorical(probs=jnp.asarray(p)))
  np.testing.assert_allclose(entropy, [1.0114, 1.0297], atol=TORCH_ATOL, rtol=0)
  point = klax.entropy(mod.Categorical(probs=jnp.asarray([[0.0, 1.0], [0.0, 1.0]])))
  np.testing.assert_array_equal(point, [0.0, 0.0])
  logits = np.log(np.asarray(CATEGORICAL_P, np.float32))
  logits[1, 1] = logits[0, 2] = -np.inf
  entropy = klax.entropy(mod.Categorical(logits=jnp.asarray(logits)))
  np.testing.assert_allclose(entropy, [0.6365, 0.5983], atol=TORCH_ATOL, rtol=0)


def test_stated_continuous_bernoulli_entropy():
  # torch test_continuous_bernoulli (TFP only: distrax has no ContinuousBernoulli).
  entropy = klax.entropy(tfd.ContinuousBernoulli(probs=jnp.asarray(BERNOULLI_P)))
  np.testing.assert_allclose(entropy, [-0.02938, -0.07641, -0.00682], atol=TORCH_ATOL, rtol=0)


ENTROPY_FAMILIES = [
  name
  for name in FAMILIES
  if name not in ("binomial30", "binomial_vectorized_count", "poisson", "pareto")
]  # TFP has no closed-form entropy for Binomial, Poisson or Pareto (klax raises, torch skips).
CASES = [(name, lib) for name in ENTROPY_FAMILIES for lib in LIBS if FAMILIES[name][lib]]


def _p_side(name):
  return pairwise(name)[0]  # The 4 × 4 grid of p's parameters.


@pytest.mark.parametrize(("name", "lib"), CASES)
def test_entropy_monte_carlo(name, lib):
  params = _p_side(name)
  actual = np.asarray(klax.entropy(FAMILIES[name][lib](*params)), np.float64)
  reference = FAMILIES[name]["ref"](*params)
  x = reference.rvs(size=(MC_SAMPLES, *actual.shape), random_state=np.random.default_rng(0))
  expected = -np.mean(reference.logpdf(x), axis=0)
  np.testing.assert_allclose(actual, expected, atol=MC_ATOL, rtol=0, err_msg=name)


# torch's ExponentialFamily classes among them, with E[log h(x)] = 0 (torch raises
# NotImplementedError for Poisson's and skips it), and Normal's ½ log 2π that EXPFAM's A drops.
EXPONENTIAL = {
  "bernoulli": 0.0,
  "beta": 0.0,
  "chi2": 0.0,
  "continuous_bernoulli": 0.0,
  "dirichlet": 0.0,
  "exponential": 0.0,
  "gamma": 0.0,
  "normal": 0.5 * np.log(2 * np.pi),
  "categorical": 0.0,
  "geometric": 0.0,
}
EXPONENTIAL_CASES = [(n, lib) for n in EXPONENTIAL for lib in LIBS if FAMILIES[n][lib]]


@pytest.mark.parametrize(("name", "lib"), EXPONENTIAL_CASES)
def test_entropy_exponential_family(name, lib):
  params = _p_side(name)
  a, eta, mean = EXPFAM[name](*params)
  inner = 0.0
  for e, m in zip(eta, mean, strict=True):
    term = e * m
    inner = inner + (term.sum(-1) if term.ndim > a.ndim else term)
  expected = a + EXPONENTIAL[name] - inner
  actual = klax.entropy(FAMILIES[name][lib](*params))
  np.testing.assert_allclose(actual, expected, rtol=RTOL32, atol=ATOL32, err_msg=name)
