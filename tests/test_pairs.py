"""klax's cross-family KL pairs against quadrature (scipy, float64) and exact sums.

Each pair family is evaluated in one jitted call over a batch of parameter draws from a fixed
seed (wide domains: shapes 0.5–8, scales 0.3–3, locations ±3); the reference is
∫ p (log p − log q) by `scipy.integrate.quad` with scipy's log-densities. Support pairs are
+inf for every type combination TFP's registry resolves, NaN for invalid parameters, with zero
gradients; the finite pairs have finite gradients.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as st
from tensorflow_probability.substrates import jax as tfp
from test_conformance_families import ContinuousBernoulli

import klax
from klax import _pairs_support

tfd = tfp.distributions
N = 4
RNG = np.random.default_rng(19)


def _u(lo, hi, n=N):
  return RNG.uniform(lo, hi, n)


def _kl_quad(sp, sq, lo, hi):
  """∫ p (log p − log q) over [lo, hi] for all cases at once (arrays of parameters and bounds),
  by `scipy.integrate.quad_vec` on t ∈ (0, 1) mapped onto each case's interval."""
  lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))

  def f(t):
    if np.all(np.isfinite(hi)):
      x, jac = lo + (hi - lo) * t, hi - lo
    elif np.all(np.isfinite(lo)):
      x, jac = lo + t / (1 - t), 1 / (1 - t) ** 2
    else:
      u = 2 * t - 1
      x, jac = u / (1 - u * u), 2 * (1 + u * u) / (1 - u * u) ** 2
    lp = sp.logpdf(x)
    with np.errstate(all="ignore"):
      out = np.exp(lp) * (lp - sq.logpdf(x)) * jac
    return np.where(np.isfinite(lp) & (lp > -700), out, 0.0)

  return si.quad_vec(f, 0, 1, epsabs=1e-12, epsrel=1e-11, limit=400)[0]


# name: (p's parameters, q's parameters, build p, build q, scipy p, scipy q, p's support).
_GAMMA_P = [_u(0.5, 8), _u(0.3, 3)]
_LS_Q = [_u(-3, 3), _u(0.3, 3)]
_UNIF = [_u(0.05, 0.5)]
_UNIF.append(_UNIF[0] + _u(0.05, 0.45))
_PARETO_P = [_u(2.5, 6), _u(0.5, 2)]
CASES = {
  "gamma_normal": (
    _GAMMA_P, _LS_Q, tfd.Gamma, distrax.Normal,
    lambda a, r: st.gamma(a, scale=1 / r), st.norm, (0, np.inf),
  ),
  "gamma_gumbel": (
    _GAMMA_P, [_u(-2, 2), _u(0.5, 3)], distrax.Gamma, tfd.Gumbel,
    lambda a, r: st.gamma(a, scale=1 / r), st.gumbel_r, (0, np.inf),
  ),
  "chi2_normal": (
    [_u(1, 8)], _LS_Q, tfd.Chi2, tfd.Normal, st.chi2, st.norm, (0, np.inf),
  ),
  "exponential_gumbel": (
    [_u(0.3, 3)], [_u(-2, 2), _u(0.5, 3)], tfd.Exponential, distrax.Gumbel,
    lambda r: st.expon(scale=1 / r), st.gumbel_r, (0, np.inf),
  ),
  "beta_normal": (
    [_u(0.6, 6), _u(0.6, 6)], _LS_Q, distrax.Beta, tfd.Normal, st.beta, st.norm, (0, 1),
  ),
  "beta_gamma": (
    [_u(0.6, 6), _u(0.6, 6)], _GAMMA_P, tfd.Beta, distrax.Gamma,
    st.beta, lambda a, r: st.gamma(a, scale=1 / r), (0, 1),
  ),
  "beta_exponential": (
    [_u(0.6, 6), _u(0.6, 6)], [_u(0.3, 3)], tfd.Beta, tfd.Exponential,
    st.beta, lambda r: st.expon(scale=1 / r), (0, 1),
  ),
  "gumbel_normal": (
    [_u(-2, 2), _u(0.3, 2)], _LS_Q, distrax.Gumbel, tfd.Normal, st.gumbel_r, st.norm,
    (-np.inf, np.inf),
  ),
  "normal_gumbel": (
    [_u(-2, 2), _u(0.3, 2)], [_u(-2, 2), _u(0.5, 3)], tfd.Normal, distrax.Gumbel, st.norm,
    st.gumbel_r, None,
  ),
  "uniform_normal": (
    _UNIF, _LS_Q, distrax.Uniform, tfd.Normal,
    lambda a, b: st.uniform(a, b - a), st.norm, None,
  ),
  "uniform_gumbel": (
    _UNIF, [_u(-2, 2), _u(0.5, 3)], tfd.Uniform, tfd.Gumbel,
    lambda a, b: st.uniform(a, b - a), st.gumbel_r, None,
  ),
  "uniform_gamma": (
    _UNIF, _GAMMA_P, tfd.Uniform, distrax.Gamma,
    lambda a, b: st.uniform(a, b - a), lambda a, r: st.gamma(a, scale=1 / r), None,
  ),
  "uniform_chi2": (
    _UNIF, [_u(1, 8)], distrax.Uniform, tfd.Chi2,
    lambda a, b: st.uniform(a, b - a), st.chi2, None,
  ),
  "uniform_beta": (
    _UNIF, [_u(0.6, 6), _u(0.6, 6)], distrax.Uniform, distrax.Beta,
    lambda a, b: st.uniform(a, b - a), st.beta, None,
  ),
  "uniform_pareto": (
    _UNIF, [_u(1, 5), _UNIF[0] * _u(0.2, 1)], tfd.Uniform, tfd.Pareto,
    lambda a, b: st.uniform(a, b - a), lambda a, s: st.pareto(a, scale=s), None,
  ),
  "pareto_gamma": (
    _PARETO_P, _GAMMA_P, tfd.Pareto, distrax.Gamma,
    lambda a, s: st.pareto(a, scale=s), lambda a, r: st.gamma(a, scale=1 / r), None,
  ),
  "pareto_chi2": (
    _PARETO_P, [_u(1, 8)], tfd.Pareto, tfd.Chi2,
    lambda a, s: st.pareto(a, scale=s), st.chi2, None,
  ),
  "pareto_normal": (
    _PARETO_P, _LS_Q, tfd.Pareto, distrax.Normal,
    lambda a, s: st.pareto(a, scale=s), st.norm, None,
  ),
  "inverse_gamma": (
    [_u(1, 5), _u(0.5, 3)], [_u(1, 5), _u(0.5, 3)], tfd.InverseGamma, tfd.InverseGamma,
    lambda a, s: st.invgamma(a, scale=s), lambda a, s: st.invgamma(a, scale=s), (0, np.inf),
  ),
  "chi2_distrax_gamma": (
    [_u(1, 8)], _GAMMA_P, tfd.Chi2, distrax.Gamma,
    st.chi2, lambda a, r: st.gamma(a, scale=1 / r), (0, np.inf),
  ),
  "cb_normal": (
    [_u(0.05, 0.95)], _LS_Q, lambda p: tfd.ContinuousBernoulli(probs=p), distrax.Normal,
    ContinuousBernoulli, st.norm, (0, 1),
  ),
  "cb_exponential": (
    [_u(0.05, 0.95)], [_u(0.3, 3)], lambda p: tfd.ContinuousBernoulli(probs=p), tfd.Exponential,
    ContinuousBernoulli, lambda r: st.expon(scale=1 / r), (0, 1),
  ),
  "beta_cb": (
    [_u(0.6, 6), _u(0.6, 6)], [_u(0.05, 0.95)], distrax.Beta,
    lambda p: tfd.ContinuousBernoulli(probs=p), st.beta, ContinuousBernoulli, (0, 1),
  ),
  "uniform_cb": (
    _UNIF, [_u(0.05, 0.95)], tfd.Uniform, lambda p: tfd.ContinuousBernoulli(probs=p),
    lambda a, b: st.uniform(a, b - a), ContinuousBernoulli, None,
  ),
}  # fmt: skip


def _support(name, args_p):
  given = CASES[name][-1]
  if given is not None:
    return given
  if name == "normal_gumbel":  # ±30σ: the rest is below 1e-190, and q's e^(−z) overflows.
    return args_p[0] - 30 * args_p[1], args_p[0] + 30 * args_p[1]
  if name.startswith("uniform"):
    return args_p[0], args_p[1]
  return args_p[1], np.inf  # Pareto: [s, ∞).


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_quadrature(name):
  args_p, args_q, build_p, build_q, scipy_p, scipy_q, _ = CASES[name]
  kl = jax.jit(lambda ap, aq: klax.kl_divergence(build_p(*ap), build_q(*aq)))
  got = np.asarray(kl([jnp.float32(a) for a in args_p], [jnp.float32(a) for a in args_q]))
  expected = _kl_quad(scipy_p(*args_p), scipy_q(*args_q), *_support(name, args_p))
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * (1 + np.max(np.abs(expected))))


def test_bernoulli_poisson_exact_sum():
  probs, rate = np.array([0.0, 0.3, 0.9, 1.0]), np.array([0.5, 2.0, 1e-3, 7.0])
  kl = jax.jit(lambda p, r: klax.kl_divergence(distrax.Bernoulli(probs=p), tfd.Poisson(r)))
  got = kl(jnp.float32(probs), jnp.float32(rate))
  p = np.stack([1 - probs, probs])
  log_q = np.stack([st.poisson(rate).logpmf(0), st.poisson(rate).logpmf(1)])
  expected = np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0), 0)
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)


@jax.jit
def _edge_values():
  low = jnp.array([-0.1, 0.2, 0.0, 0.3])
  return (
    klax.kl_divergence(tfd.Uniform(low, low + 0.5), tfd.Gamma(2.0, 1.0)),
    klax.kl_divergence(tfd.Uniform(0.1, jnp.array([0.9, 1.2])), distrax.Beta(2.0, 2.0)),
    klax.kl_divergence(tfd.Pareto(jnp.array([0.5, 1.0, 1.5]), 1.0), tfd.Gamma(2.0, 1.0)),
    klax.kl_divergence(tfd.Gamma(jnp.array([2.0, jnp.nan]), 1.0), tfd.Normal(0.0, 1.0)),
    klax.kl_divergence(tfd.Beta(2.0, 3.0), tfd.Uniform(-1.0, 2.0)),
  )


def test_infinite_where_support_escapes_and_nan_for_invalid():
  uniform_gamma, uniform_beta, pareto_gamma, nan_gamma, beta_uniform = _edge_values()
  assert np.isinf(uniform_gamma[0]) and np.all(np.isfinite(uniform_gamma[1:]))
  assert np.isfinite(uniform_beta[0]) and np.isinf(uniform_beta[1])
  assert np.all(np.isinf(pareto_gamma[:2])) and np.isfinite(pareto_gamma[2])
  assert np.isfinite(nan_gamma[0]) and np.isnan(nan_gamma[1])
  # Beta ‖ Uniform ⊃ [0, 1]: log(c − a) − H(Beta).
  np.testing.assert_allclose(beta_uniform, np.log(3.0) - st.beta(2.0, 3.0).entropy(), rtol=3e-6)


def _instances(scale):
  """One instance of every type the support rules name, its float parameter scaled by `scale`."""
  s = scale
  return {
    distrax.Normal: distrax.Normal(s, 1.0), tfd.Normal: tfd.Normal(s, 1.0),
    distrax.Gumbel: distrax.Gumbel(s, 1.0), tfd.Gumbel: tfd.Gumbel(s, 1.0),
    distrax.Laplace: distrax.Laplace(s, 1.0), tfd.Laplace: tfd.Laplace(s, 1.0),
    distrax.Gamma: distrax.Gamma(2.0 * s, 1.0), tfd.Gamma: tfd.Gamma(2.0 * s, 1.0),
    tfd.Chi2: tfd.Chi2(3.0 * s), tfd.Exponential: tfd.Exponential(s),
    distrax.Beta: distrax.Beta(2.0 * s, 2.0), tfd.Beta: tfd.Beta(2.0 * s, 2.0),
    distrax.Uniform: distrax.Uniform(0.0, s), tfd.Uniform: tfd.Uniform(0.0, s),
    tfd.Pareto: tfd.Pareto(2.0 * s, 1.0),
    distrax.Bernoulli: distrax.Bernoulli(probs=0.5 * s), tfd.Bernoulli: tfd.Bernoulli(probs=0.5 * s),
    tfd.Poisson: tfd.Poisson(s), tfd.Binomial: tfd.Binomial(3.0, probs=0.5 * s),
    tfd.ContinuousBernoulli: tfd.ContinuousBernoulli(probs=0.3 * s),
  }  # fmt: skip


SUPPORT_PAIRS = [
  (tp, tq) for types_p, types_q in _pairs_support.INFINITE for tp in types_p for tq in types_q
]
SUPPORT_PAIRS.append((tfd.Exponential, tfd.Uniform))  # Resolved through tfd.Gamma.


def test_support_pairs_infinite_with_zero_gradients():
  def values(scale):
    made = _instances(scale)
    return jnp.stack([klax.kl_divergence(made[tp], made[tq]) for tp, tq in SUPPORT_PAIRS])

  both = jax.jit(jax.vmap(lambda s: (values(s), jax.jacfwd(values)(s))))
  got, grads = both(jnp.array([1.0, np.nan], jnp.float32))
  assert got.dtype == jnp.float32 and np.all(np.isposinf(got[0])), SUPPORT_PAIRS
  assert np.all(np.isnan(got[1]))
  assert np.all(np.asarray(grads[0]) == 0)


def test_finite_pairs_gradients_finite():
  def total(loc):
    return (
      klax.kl_divergence(tfd.Gamma(2.0, 1.5), tfd.Normal(loc, 2.0))
      + klax.kl_divergence(tfd.Uniform(0.0, 0.5), distrax.Gumbel(loc, 1.0))
      + klax.kl_divergence(tfd.Normal(loc, 0.5), tfd.Gumbel(0.0, 1.0))
      + klax.kl_divergence(tfd.Uniform(0.0, 0.5), tfd.Pareto(2.0, 0.5 + 0 * loc))
      + klax.kl_divergence(tfd.Uniform(0.1 + 0.0 * loc, 0.5), tfd.Beta(2.0, 2.0))
    )

  assert np.isfinite(jax.jit(jax.grad(total))(jnp.float32(0.3)))


def test_unsupported_pair_names_the_estimator_for_the_pair():
  with pytest.raises(klax.UnsupportedDistributionError) as error:
    klax.kl_divergence(tfd.StudentT(3.0, 0.0, 1.0), tfd.Gamma(2.0, 1.0))
  assert "kl_divergence_mc" in str(error.value) and "mixture" not in str(error.value)
  mixture = tfd.MixtureSameFamily(
    tfd.Categorical(logits=jnp.zeros(2)), tfd.Normal(jnp.zeros(2), 1.0)
  )
  with pytest.raises(klax.UnsupportedDistributionError, match="kl_divergence_mixture_"):
    klax.kl_divergence(mixture, tfd.Normal(0.0, 1.0))


def test_poisson_and_pareto_entropy_against_exact_sums_and_scipy():
  rate = np.array([1e-3, 0.7, 3.0, 25.0, 399.0, 401.0, 5e3, 1e6])
  pareto = (np.array([0.5, 2.0, 30.0]), np.array([0.1, 1.0, 7.0]))
  run = jax.jit(lambda r, a, s: (klax.entropy(tfd.Poisson(r)), klax.entropy(tfd.Pareto(a, s))))
  got_poisson, got_pareto = run(jnp.float32(rate), jnp.float32(pareto[0]), jnp.float32(pareto[1]))
  expected = []
  for lam in rate:  # Exact sums in float64 over ±(20√λ + 30) around λ (all the mass).
    k = np.arange(max(0, int(lam - 20 * np.sqrt(lam) - 30)), int(lam + 20 * np.sqrt(lam) + 30))
    log_p = st.poisson(lam).logpmf(k)
    expected.append(-np.sum(np.exp(log_p) * log_p))
  np.testing.assert_allclose(got_poisson, expected, rtol=3e-6)
  expected_pareto = st.pareto(pareto[0], scale=pareto[1]).entropy()
  np.testing.assert_allclose(got_pareto, expected_pareto, rtol=3e-6, atol=1e-6)
  assert np.isnan(klax.entropy(tfd.Poisson(-1.0)))


def _cb(probs):
  return tfd.ContinuousBernoulli(probs=probs)


def _torch_pareto(
  scale, alpha
):  # torch's Pareto(scale, alpha); TFP's Pareto(concentration, scale).
  return tfd.Pareto(alpha, scale)


# torch TestKL.infinite_examples for the cross-family pairs klax registers (TFP types; torch's
# Gamma(concentration, rate), Uniform(low, high), Gumbel/Laplace/Normal(loc, scale) as TFP's).
TORCH_INFINITE = [
  (lambda: tfd.Beta(1.0, 2.0), lambda: tfd.Uniform(0.25, 1.0)),
  (lambda: tfd.Beta(1.0, 2.0), lambda: tfd.Uniform(0.0, 0.75)),
  (lambda: tfd.Beta(1.0, 2.0), lambda: tfd.Uniform(0.25, 0.75)),
  (lambda: tfd.Beta(1.0, 2.0), lambda: _torch_pareto(1.0, 2.0)),
  *[
    (p, q)
    for p in (lambda: tfd.Chi2(1.0), lambda: tfd.Exponential(1.0), lambda: tfd.Gamma(1.0, 2.0))
    for q in (lambda: tfd.Beta(2.0, 3.0), lambda: _torch_pareto(2.0, 3.0), lambda: tfd.Uniform(-2.0, 3.0))
  ],
  *[
    (p, q)
    for p in (lambda: tfd.Gumbel(-1.0, 2.0), lambda: tfd.Laplace(-1.0, 2.0), lambda: tfd.Normal(-1.0, 2.0))
    for q in (
      lambda: tfd.Beta(3.0, 4.0),
      lambda: tfd.Chi2(3.0),
      lambda: tfd.Exponential(3.0),
      lambda: tfd.Gamma(3.0, 4.0),
      lambda: _torch_pareto(3.0, 4.0),
      lambda: tfd.Uniform(-3.0, 4.0),
    )
  ],
  (lambda: _torch_pareto(2.0, 1.0), lambda: tfd.Chi2(3.0)),
  (lambda: _torch_pareto(2.0, 1.0), lambda: tfd.Exponential(3.0)),
  (lambda: _torch_pareto(2.0, 1.0), lambda: tfd.Gamma(3.0, 4.0)),
  (lambda: _torch_pareto(1.0, 2.0), lambda: tfd.Normal(-3.0, 4.0)),
  (lambda: tfd.Poisson(2.0), lambda: tfd.Bernoulli(probs=0.5)),
  (lambda: tfd.Poisson(2.3), lambda: tfd.Binomial(10.0, probs=0.2)),
  (lambda: tfd.Uniform(-1.0, 1.0), lambda: tfd.Beta(2.0, 2.0)),
  (lambda: tfd.Uniform(0.0, 2.0), lambda: tfd.Beta(3.0, 4.0)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: tfd.Beta(3.0, 4.0)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: tfd.Chi2(3.0)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: tfd.Exponential(3.0)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: tfd.Gamma(3.0, 4.0)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: _torch_pareto(3.0, 4.0)),
  (lambda: _cb(0.25), lambda: tfd.Uniform(0.25, 1.0)),
  (lambda: _cb(0.25), lambda: tfd.Uniform(0.0, 0.75)),
  (lambda: _cb(0.25), lambda: tfd.Uniform(0.25, 0.75)),
  (lambda: _cb(0.25), lambda: _torch_pareto(1.0, 2.0)),
  (lambda: tfd.Exponential(1.0), lambda: _cb(0.75)),
  (lambda: tfd.Gamma(1.0, 2.0), lambda: _cb(0.75)),
  (lambda: tfd.Gumbel(-1.0, 2.0), lambda: _cb(0.75)),
  (lambda: tfd.Laplace(-1.0, 2.0), lambda: _cb(0.75)),
  (lambda: tfd.Normal(-1.0, 2.0), lambda: _cb(0.75)),
  (lambda: tfd.Uniform(-1.0, 1.0), lambda: _cb(0.75)),
  (lambda: tfd.Uniform(0.0, 2.0), lambda: _cb(0.75)),
  (lambda: tfd.Uniform(-1.0, 2.0), lambda: _cb(0.75)),
]  # fmt: skip


def test_torch_infinite_examples():
  got = jax.jit(lambda: jnp.stack([klax.kl_divergence(p(), q()) for p, q in TORCH_INFINITE]))()
  assert np.all(np.isposinf(got)), np.flatnonzero(~np.isposinf(got))
