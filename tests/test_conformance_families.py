"""The families of PyTorch's TestKL (test/distributions/test_distributions.py) for the conformance
tests: its `setUp` parameters, a TFP-on-JAX and (where distrax has the family) a distrax
constructor, and an independent float64 reference (scipy's sampler and density, or numpy where
scipy has none) with `rvs(size=(n, *batch_shape), random_state)` and `logpdf(x)`.

No tests here: shared by tests/test_conformance.py and tests/test_conformance_entropy.py.
"""

import distrax
import jax.numpy as jnp
import numpy as np
import scipy.special as sp
import scipy.stats as st
from tensorflow_probability.substrates import jax as tfp

tfd = tfp.distributions


class Scipy:
  """A frozen scipy distribution (continuous or discrete) as `rvs` and `logpdf`."""

  def __init__(self, frozen):
    self.frozen = frozen

  def rvs(self, size, random_state):
    return self.frozen.rvs(size=size, random_state=random_state)

  def logpdf(self, x):
    fn = getattr(self.frozen, "logpdf", None) or self.frozen.logpmf
    return fn(x)


class Categorical:
  """Categorical over the last axis of `probs` (sampled by inverting the cumulative sum)."""

  def __init__(self, probs):
    self.probs = np.asarray(probs, np.float64) / np.sum(probs, -1, keepdims=True)

  def rvs(self, size, random_state):
    u = random_state.random(size)[..., None]
    index = (u > np.cumsum(self.probs, -1)).sum(-1)
    return np.minimum(index, self.probs.shape[-1] - 1)

  def logpdf(self, x):
    probs = np.broadcast_to(self.probs, x.shape + self.probs.shape[-1:])
    return np.log(np.take_along_axis(probs, x[..., None], -1)[..., 0])


class Dirichlet:
  """Dirichlet: normalised Gamma draws; log density from log Γ."""

  def __init__(self, alpha):
    self.alpha = np.asarray(alpha, np.float64)

  def rvs(self, size, random_state):
    g = random_state.gamma(np.broadcast_to(self.alpha, (*size, self.alpha.shape[-1])))
    return g / g.sum(-1, keepdims=True)

  def logpdf(self, x):
    a = self.alpha
    return sp.gammaln(a.sum(-1)) - sp.gammaln(a).sum(-1) + ((a - 1) * np.log(x)).sum(-1)


def cb_log_norm(lam):
  """log C(λ) of the continuous Bernoulli, C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ), C(½) = 2."""
  lam = np.asarray(lam, np.float64)
  safe = np.where(lam == 0.5, 0.25, lam)
  return np.where(lam == 0.5, np.log(2.0), np.log(2 * np.arctanh(1 - 2 * safe) / (1 - 2 * safe)))


class ContinuousBernoulli:
  """Continuous Bernoulli on [0, 1]: inverse-CDF samples, p(x) = C(λ) λ^x (1 − λ)^(1 − x)."""

  def __init__(self, lam):
    self.lam = np.asarray(lam, np.float64)

  def rvs(self, size, random_state):
    u, lam = random_state.random(size), np.broadcast_to(self.lam, size)
    half = lam == 0.5
    safe = np.where(half, 0.25, lam)
    x = np.log1p(u * (2 * safe - 1) / (1 - safe)) / (np.log(safe) - np.log1p(-safe))
    return np.where(half, u, x)

  def logpdf(self, x):
    lam = self.lam
    return x * np.log(lam) + (1 - x) * np.log1p(-lam) + cb_log_norm(lam)


class IndependentNormal:
  """Normal(loc, scale) with its last axis an event: log densities summed over it."""

  def __init__(self, loc, scale):
    self.loc, self.scale = np.asarray(loc, np.float64), np.asarray(scale, np.float64)

  def rvs(self, size, random_state):
    shape = (*size, self.loc.shape[-1])
    return self.loc + self.scale * random_state.standard_normal(shape)

  def logpdf(self, x):
    return st.norm.logpdf(x, self.loc, self.scale).sum(-1)


class MultivariateNormal:
  """scipy's multivariate normal for one (unbatched) distribution."""

  def __init__(self, mean, cov):
    self.frozen = st.multivariate_normal(mean, cov)

  def rvs(self, size, random_state):
    return self.frozen.rvs(size=size[0], random_state=random_state).reshape(*size, -1)

  def logpdf(self, x):
    return self.frozen.logpdf(x)


def _f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def _ctors(tfp_ctor, distrax_ctor, ref):
  def cast(ctor):
    return None if ctor is None else (lambda *a: ctor(*_f32(*a)))

  return {"tfp": cast(tfp_ctor), "distrax": cast(distrax_ctor), "ref": ref}


_NORMAL = [[-2.0, 2.0, -3.0, 3.0], [1.0, 2.0, 1.0, 2.0]]
_SIMPLEX = [[0.4, 0.3, 0.3], [0.2, 0.7, 0.1], [0.33, 0.33, 0.34], [0.2, 0.2, 0.6]]
_SHAPE_RATE = [[1.0, 2.5, 1.0, 2.5], [1.5, 1.5, 3.5, 3.5]]
_LOC_SCALE = [[-2.0, 4.0, -3.0, 6.0], [1.0, 2.5, 1.0, 2.5]]
_PROBS = [[0.1, 0.2, 0.6, 0.9]]

# name: constructors and reference, "params" (each a list of 4 values, pairwise) or "pair".
FAMILIES = {
  "bernoulli": _ctors(
    lambda p: tfd.Bernoulli(probs=p),
    lambda p: distrax.Bernoulli(probs=p),
    lambda p: Scipy(st.bernoulli(p)),
  )
  | {"params": _PROBS},
  "geometric": _ctors(lambda p: tfd.Geometric(probs=p), None, lambda p: Scipy(st.geom(p, loc=-1)))
  | {"params": _PROBS},
  "binomial30": _ctors(
    lambda p: tfd.Binomial(30.0, probs=p), None, lambda p: Scipy(st.binom(30, p))
  )
  | {"params": _PROBS},
  "binomial_vectorized_count": _ctors(
    lambda n, p: tfd.Binomial(n, probs=p), None, lambda n, p: Scipy(st.binom(n.astype(int), p))
  )
  | {"pair": (([3.0, 4.0], [0.4, 0.6]), ([3.0, 4.0], [0.5, 0.8]))},
  "beta": _ctors(tfd.Beta, distrax.Beta, lambda a, b: Scipy(st.beta(a, b)))
  | {"params": _SHAPE_RATE},
  "categorical": _ctors(
    lambda p: tfd.Categorical(probs=p), lambda p: distrax.Categorical(probs=p), Categorical
  )
  | {"params": [_SIMPLEX]},
  "onehotcategorical": _ctors(
    lambda p: tfd.OneHotCategorical(probs=p),
    lambda p: distrax.OneHotCategorical(probs=p),
    Categorical,
  )
  | {"params": [_SIMPLEX]},
  "cauchy": _ctors(tfd.Cauchy, None, lambda m, s: Scipy(st.cauchy(m, s))) | {"params": _NORMAL},
  "chi2": _ctors(tfd.Chi2, None, lambda k: Scipy(st.chi2(k))) | {"params": [[1.0, 2.0, 2.5, 5.0]]},
  "dirichlet": _ctors(tfd.Dirichlet, distrax.Dirichlet, Dirichlet)
  | {"params": [[[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.33, 0.33, 0.34], [0.2, 0.2, 0.4]]]},
  "exponential": _ctors(tfd.Exponential, None, lambda r: Scipy(st.expon(scale=1 / r)))
  | {"params": [[1.0, 2.5, 5.0, 10.0]]},
  "gamma": _ctors(tfd.Gamma, distrax.Gamma, lambda a, b: Scipy(st.gamma(a, scale=1 / b)))
  | {"params": _SHAPE_RATE},
  "gumbel": _ctors(tfd.Gumbel, distrax.Gumbel, lambda m, s: Scipy(st.gumbel_r(m, s)))
  | {"params": _LOC_SCALE},
  "halfnormal": _ctors(tfd.HalfNormal, None, lambda s: Scipy(st.halfnorm(scale=s)))
  | {"params": [[1.0, 2.0, 1.0, 2.0]]},
  "laplace": _ctors(tfd.Laplace, distrax.Laplace, lambda m, s: Scipy(st.laplace(m, s)))
  | {"params": _LOC_SCALE},
  "lognormal": _ctors(tfd.LogNormal, None, lambda m, s: Scipy(st.lognorm(s=s, scale=np.exp(m))))
  | {"params": _NORMAL},
  "normal": _ctors(tfd.Normal, distrax.Normal, lambda m, s: Scipy(st.norm(m, s)))
  | {"params": _NORMAL},
  "independent": _ctors(
    lambda m, s: tfd.Independent(tfd.Normal(m, s), 1),
    lambda m, s: distrax.Independent(distrax.Normal(m, s), 1),
    IndependentNormal,
  )
  | {"params": _NORMAL},
  "pareto": _ctors(  # torch's Pareto(scale, alpha); TFP's is Pareto(concentration, scale).
    lambda s, a: tfd.Pareto(a, s), None, lambda s, a: Scipy(st.pareto(a, scale=s))
  )
  | {
    "pair": (
      (np.broadcast_to([2.5, 4.0, 2.5, 4.0], (4, 4)), np.broadcast_to([2.25, 3.75] * 2, (4, 4))),
      (np.broadcast_to([2.25, 3.75, 2.25, 3.8], (4, 4)), np.broadcast_to([2.25, 3.75] * 2, (4, 4))),
    )
  },
  "poisson": _ctors(tfd.Poisson, None, lambda r: Scipy(st.poisson(r)))
  | {"params": [[0.3, 1.0, 5.0, 10.0]]},
  "continuous_bernoulli": _ctors(
    lambda p: tfd.ContinuousBernoulli(probs=p), None, ContinuousBernoulli
  )
  | {"params": [[0.1, 0.2, 0.5, 0.9]]},
}


def pairwise(name):
  """PyTorch's `pairwise`: (p's, q's) parameter arrays; p varies along columns, q along rows."""
  family = FAMILIES[name]
  if "pair" in family:
    return tuple(tuple(np.asarray(x, np.float64) for x in side) for side in family["pair"])
  p = [np.asarray([values] * len(values), np.float64) for values in family["params"]]
  return tuple(p), tuple(np.swapaxes(x, 0, 1) for x in p)
