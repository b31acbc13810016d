"""Monte Carlo estimates of KL divergence, entropy and cross-entropy, with standard errors.

With x_1 … x_n ~ p and the log ratio ℓ = log p(x) − log q(x) (so r = q(x)/p(x) = e^{−ℓ}), the
three estimators of KL(p ‖ q) popularised by Schulman (2020) are, per sample:

- k1 = ℓ = −log r. Unbiased; can be negative; its variance grows with the KL.
- k2 = ½ ℓ². Biased: E_p[k2] is an f-divergence that agrees with KL(p ‖ q) to second order in
  the log ratio, so the bias is small when p ≈ q and large when they are far apart. Never negative;
  low variance.
- k3 = (r − 1) − log r = expm1(−ℓ) + ℓ. Unbiased (E_p[r] = 1), never negative, lower variance
  than k1 when p ≈ q.

Gradients of the *values* are another matter. In RLHF code the samples come from the policy
p = π_θ, and the loss is differentiated through log p(x) with x held fixed. Then, in expectation
over x ~ p:
- ∇_θ k1 = ∇ log p has mean 0: k1 as a loss gives no KL gradient at all;
- ∇_θ k2 = ℓ ∇ log p has mean ∇_θ KL(p_θ ‖ q): k2's gradient is the right one, though its value
  is biased;
- ∇_θ k3 = (1 − r) ∇ log p has mean ∇_θ KL(q ‖ p_θ): the gradient of the *other* direction.
When instead the parameters belong to q (x ~ p fixed, p not depending on them), k1 and k3 both give
∇ KL(p ‖ q) in expectation. The tests check each of these statements exactly on categoricals.

k3 = e^{−ℓ} − 1 + ℓ is summed as its Taylor series Σ_{k≥2} (−ℓ)^k/k! where |ℓ| < 1/4
(`klax._series`: expm1(−ℓ) + ℓ loses 2ε/ℓ relative, 10% at ℓ = 1e-6 in float32), never clamped.

Standard errors sd/√n mean something only when the per-sample terms have a finite variance. Which
tail decides depends on the estimator: k1's terms are ℓ (light-tailed unless the log densities
are), k2's ℓ²/2; k3's right tail is r = q/p, heavy whenever E_p[(q/p)²] = ∞ (q wider-tailed than
p). So each `Estimate` carries `pareto_k`, the generalized-Pareto shape k̂ of its terms' heavier
tail (both tails fitted, as for general Monte Carlo estimates in Vehtari et al. 2024; for k3 also
r's own tail, which larger −log r terms can hide when p and q are far apart): terms of
shape k have 1/k finite moments, so k̂ > 0.5 means no finite variance and a standard error that
understates the error (> 0.7: unreliable), and outside `jit` a `RuntimeWarning`. k̂ is itself an
estimate: light but long tails (log-normal r, p and q shifted apart) can read 0.5–0.7 at a few
thousand samples, where more samples settle it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from klax import _checks
from klax import _series
from klax._gradients import terms_pareto_shape
from klax._typing import Distribution
from klax._typing import Estimator
from klax._typing import PRNGKey


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=("value", "stderr", "pareto_k"), meta_fields=()
)
@dataclasses.dataclass(frozen=True, eq=False)
class Estimate:
  """A Monte Carlo estimate: the sample mean, its standard error and a tail diagnostic.

  Unpacks like the pair it extends, `value, stderr = estimate`; read `pareto_k` by name.

  Attributes:
    value: the sample mean of the per-sample terms.
    stderr: its standard error, sd (ddof = 1) / √n; inf for n = 1.
    pareto_k: k̂, the generalized-Pareto shape of the terms' heavier tail (see the module
      docstring): below 0.5 the terms have a finite variance and `stderr` is meaningful; above 0.5
      it understates the error; above 0.7 the estimate is unreliable. NaN when it cannot be
      estimated (fewer than 25 samples, or non-finite terms); −inf when the tail is flat (equal
      terms); None when it was not computed (an `Estimate` built by hand). A constant under
      `jax.grad`.
  """

  value: jax.Array
  stderr: jax.Array
  pareto_k: jax.Array | None = None

  def __iter__(self):
    return iter((self.value, self.stderr))

  def __getitem__(self, index):
    return (self.value, self.stderr)[index]


def warn_if_heavy_tailed(estimate: Estimate, what: str, stacklevel: int = 3) -> None:
  """`RuntimeWarning` (outside `jit` only) when some `estimate.pareto_k` exceeds 0.5."""
  if estimate.pareto_k is None or not _checks.is_concrete(estimate.pareto_k):
    return
  worst = float(jnp.nan_to_num(jnp.max(estimate.pareto_k), nan=-jnp.inf))
  if worst > 0.5:
    warnings.warn(
      f"{what}: the Monte Carlo terms have a heavy tail (Pareto k̂ = {worst:.2f} > 0.5, fewer "
      "than two finite moments), so `stderr` understates the error"
      + (" and the estimate is unreliable" if worst > 0.7 else "")
      + (". k1's terms (ℓ) may have lighter tails" if "(k2)" in what or "(k3)" in what else "")
      + ". More samples, or a better-matched pair, settle whether the tail is real.",
      RuntimeWarning,
      stacklevel=stacklevel,
    )


def kl_from_log_ratio(log_ratio: ArrayLike, estimator: Estimator = "k1") -> jax.Array:
  """Per-sample KL estimator values from log ratios ℓ = log p(x) − log q(x), x ~ p.

  k1 = ℓ;  k2 = ½ ℓ²;  k3 = (e^{−ℓ} − 1) + ℓ. Their mean over x ~ p estimates KL(p ‖ q) (k1 and
  k3 without bias). The result is unreduced, like optax's losses: average it yourself (per token
  in RLHF, typically). float16/bfloat16 input is promoted to float32 first (in bfloat16, k3 of
  ℓ = 0.002 would round to 0). NaN gives NaN; ℓ = +inf gives +inf for every estimator, ℓ = −inf
  gives +inf for k2 and k3 (−inf for k1).

  Args:
    log_ratio: array of log p(x) − log q(x) for samples x ~ p.
    estimator: "k1", "k2" or "k3".

  Returns:
    An array with the shape of `log_ratio` (float32 for float16/bfloat16 input).

  Examples:
    >>> import jax.numpy as jnp, klax
    >>> klax.kl_from_log_ratio(jnp.array([0.0, 1.0]), "k2").tolist()
    [0.0, 0.5]
  """
  estimator = _checks.estimator_name(estimator)
  log_ratio = _checks.promote_low_precision(_checks.float_array(log_ratio, "log_ratio"))
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * jnp.square(log_ratio)
  k3 = _series.exp_remainder(log_ratio, jnp.expm1(-log_ratio))
  return jnp.where(log_ratio == -jnp.inf, jnp.inf, k3)  # Not inf − inf: its limit, +inf.


def mean_and_stderr(
  values: jax.Array, warn_as: str | None = "Monte Carlo estimate", log_weights=None
) -> Estimate:
  """Sample mean over axis 0, its standard error std (ddof=1) / √n, and the terms' tail k̂.

  float16/bfloat16 values are promoted to float32. `log_weights`: of weights inside the terms,
  whose tail k̂ counts too (see `terms_pareto_shape`). With `warn_as`, a `RuntimeWarning` naming
  it is raised (outside `jit`) when k̂ > 0.5.
  """
  values = _checks.promote_low_precision(values)
  n = values.shape[0]
  stderr = (
    jnp.std(values, axis=0, ddof=1) / math.sqrt(n) if n > 1 else jnp.full_like(values[0], jnp.inf)
  )
  # k̂ is a diagnostic, not differentiated (jax.grad through an Estimate sees a constant).
  shape = terms_pareto_shape(*jax.lax.stop_gradient((values, log_weights)))
  estimate = Estimate(jnp.mean(values, axis=0), stderr, shape)
  if warn_as is not None:
    warn_if_heavy_tailed(estimate, warn_as, stacklevel=4)
  return estimate


def sample_and_log_prob(dist, key: jax.Array, num_samples: int):
  """`num_samples` draws from a distrax or TFP distribution, and their log densities."""
  if hasattr(dist, "sample_and_log_prob"):  # distrax: one pass (e.g. through a flow).
    return dist.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
  x = dist.sample(sample_shape=(num_samples,), seed=key)
  return x, dist.log_prob(x)


def _samples(p, key: jax.Array, num_samples: int):
  num_samples = _checks.positive_int(num_samples, "num_samples")
  _checks.prng_key(key, "key")
  x, log_p = sample_and_log_prob(p, key, num_samples)
  return x, _checks.promote_low_precision(log_p)


def kl_divergence_mc(
  p: Distribution, q: Distribution, key: PRNGKey, num_samples: int, estimator: Estimator = "k1"
) -> Estimate:
  """Monte Carlo estimate of KL(p ‖ q) = E_{x ~ p}[log p(x) − log q(x)].

  Draws `num_samples` points from `p` with `key`, forms the log ratios and averages the chosen
  estimator (see `kl_from_log_ratio`). Works for any pair whose `log_prob` exists, e.g. mixtures.
  Sampling is reparameterised when `p`'s sampler is, so `jax.grad` of the value is the pathwise
  gradient.
  `pareto_k` is the k̂ of the terms' tails (k1: ℓ; k2: ℓ²; k3: those of ℓ and of r = q/p itself,
  heavy whenever E_p[(q/p)²] = ∞, e.g. q wider-tailed than p, or out of reach of the samples when
  p and q are far apart; the larger is kept): above 0.5 `stderr` understates the error
  (a `RuntimeWarning` outside `jit`). float16/bfloat16 log densities are promoted to float32.

  Args:
    p: distribution to sample from.
    q: distribution with the same event shape.
    key: a `jax.random` key.
    num_samples: number of draws (a positive Python int).
    estimator: "k1" (default), "k2" or "k3".

  Returns:
    `Estimate(value, stderr, pareto_k)`, each with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.kl_divergence_mc(distrax.Normal(0.0, 1.0), distrax.Normal(1.0, 1.0),
    ...                             jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 0.5) < 4 * float(est.stderr), bool(est.pareto_k < 0.5)
    (True, True)
  """
  _checks.distribution(p, "p")
  _checks.distribution(q, "q")
  _checks.same_event_shape(p, q)
  estimator = _checks.estimator_name(estimator)
  x, log_p = _samples(p, key, num_samples)
  log_ratio = log_p - _checks.promote_low_precision(q.log_prob(x))
  terms = kl_from_log_ratio(log_ratio, estimator)
  log_r = -log_ratio if estimator == "k3" else None  # k3 = r − 1 − log r holds r itself.
  return mean_and_stderr(terms, f"kl_divergence_mc({estimator})", log_r)


def entropy_mc(p: Distribution, key: PRNGKey, num_samples: int) -> Estimate:
  """Monte Carlo estimate of H(p) = −E_{x ~ p}[log p(x)], with its standard error.

  `pareto_k` is the k̂ of the tail of −log p(x) (a `RuntimeWarning` outside `jit` above 0.5);
  float16/bfloat16 log densities are promoted to float32.

  Args:
    p: a distribution with `sample` and `log_prob` (distrax or TFP).
    key: a `jax.random` key.
    num_samples: the number of draws S from `p` (a positive int).

  Returns:
    `Estimate(value, stderr, pareto_k)`: the sample mean, its standard error (sample sd / √S)
    and the tail k̂, with the batch shape of the distributions.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.entropy_mc(distrax.Normal(0.0, 1.0), jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 1.4189385) < 4 * float(est.stderr)
    True
  """
  _checks.distribution(p, "p")
  _, log_p = _samples(p, key, num_samples)
  return mean_and_stderr(-log_p, "entropy_mc")


def cross_entropy_mc(p: Distribution, q: Distribution, key: PRNGKey, num_samples: int) -> Estimate:
  """Monte Carlo estimate of H(p, q) = −E_{x ~ p}[log q(x)], with its standard error.

  `pareto_k` is the k̂ of the tail of −log q(x), x ~ p (heavy where q is much thinner than p; a
  `RuntimeWarning` outside `jit` above 0.5); float16/bfloat16 log densities are promoted to float32.

  Args:
    p: a distribution with `sample` and `log_prob` (expectations are under `p`).
    q: a distribution with `log_prob` and the same event shape.
    key: a `jax.random` key.
    num_samples: the number of draws S from `p` (a positive int).

  Returns:
    `Estimate(value, stderr, pareto_k)`: the sample mean, its standard error (sample sd / √S)
    and the tail k̂, with the batch shape of the distributions.

  Examples:
    >>> import distrax, jax, klax
    >>> est = klax.cross_entropy_mc(distrax.Normal(0.0, 1.0), distrax.Normal(1.0, 1.0),
    ...                             jax.random.key(0), 10_000)
    >>> abs(float(est.value) - 1.9189385) < 4 * float(est.stderr)
    True
  """
  _checks.distribution(p, "p")
  _checks.distribution(q, "q")
  _checks.same_event_shape(p, q)
  x, _ = _samples(p, key, num_samples)
  return mean_and_stderr(-_checks.promote_low_precision(q.log_prob(x)), "cross_entropy_mc")
