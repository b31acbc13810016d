"""Approximations and bounds for the KL divergence between Gaussian mixtures.

KL between Gaussian mixtures has no closed form. With p = Σ_a π_a f_a and q = Σ_b ω_b g_b
(Gaussian components f_a, g_b), Hershey & Olsen (2007) give three approximations and a
variational upper bound, and Durrieu, Thiran & Kelly (2012) a lower bound. Notation: D(f‖g) is the
Gaussian closed-form KL, H(f) the Gaussian entropy, t_ab = ∫ f_a g_b = N(μ_a; μ_b, Σ_a + Σ_b)
and z_aa' = ∫ f_a f_a'. Names say which is which:

- `kl_divergence_mixture_variational_approx` (approximation, neither bound),
- `kl_divergence_mixture_product_approx` (approximation, neither bound),
- `kl_divergence_mixture_matched_bound_approx` (Goldberger's matched-bound approximation; a true
  bound only when the matching is one-to-one, so treat it as an approximation),
- `kl_divergence_mixture_upper_bound` (a true upper bound),
- `kl_divergence_mixture_lower_bound` (a true lower bound; may be negative, when 0 is better).

p and q may be `MixtureSameFamily` distributions (distrax or TFP) whose components are `Normal`s
or multivariate normals, or single Gaussians (treated as one-component mixtures). Batch shapes
broadcast. For the exact value use `klax.kl_divergence_mc`.
"""

from __future__ import annotations

import jax

from klax._gaussian_mixture import lower_bound as _lower_bound
from klax._gaussian_mixture import matched_bound_approx as _matched_bound_approx
from klax._gaussian_mixture import mixtures as _mixtures
from klax._gaussian_mixture import product_approx as _product_approx
from klax._gaussian_mixture import upper_bound as _upper_bound
from klax._gaussian_mixture import variational_approx as _variational_approx
from klax._typing import Distribution


def kl_divergence_mixture_variational_approx(p: Distribution, q: Distribution) -> jax.Array:
  """Variational approximation of KL(p ‖ q) for Gaussian mixtures (Hershey & Olsen 2007).

  D_var = Σ_a π_a log[ Σ_a' π_a' e^{−D(f_a‖f_a')} / Σ_b ω_b e^{−D(f_a‖g_b)} ].

  An approximation, not a bound; exact when both are single Gaussians.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_variational_approx(p, q)):.3f}")
    0.297
  """
  return _variational_approx(*_mixtures(p, q))


def kl_divergence_mixture_product_approx(p: Distribution, q: Distribution) -> jax.Array:
  """Product-of-Gaussians approximation of KL(p ‖ q) (Hershey & Olsen 2007).

  D_prod = Σ_a π_a log[ Σ_a' π_a' z_aa' / Σ_b ω_b t_ab ],  z_aa' = ∫ f_a f_a', t_ab = ∫ f_a g_b.

  An approximation, not a bound (it replaces E_f[log ·] by log E_f[·] in both terms).

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_product_approx(p, q)):.3f}")
    0.396
  """
  return _product_approx(*_mixtures(p, q))


def kl_divergence_mixture_matched_bound_approx(p: Distribution, q: Distribution) -> jax.Array:
  """Goldberger's matched-bound approximation of KL(p ‖ q) (Hershey & Olsen 2007, §5).

  D_match = Σ_a π_a [ D(f_a ‖ g_{m(a)}) + log(π_a / ω_{m(a)}) ],
  m(a) = argmin_b D(f_a ‖ g_b) − log ω_b.

  An approximation: it is an upper bound only when the matching m is one-to-one.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The approximation, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_matched_bound_approx(p, q)):.3f}")
    0.297
  """
  return _matched_bound_approx(*_mixtures(p, q))


def kl_divergence_mixture_lower_bound(p: Distribution, q: Distribution) -> jax.Array:
  """A lower bound on KL(p ‖ q) for Gaussian mixtures (Durrieu, Thiran & Kelly 2012).

  KL ≥ Σ_a π_a [ log Σ_a' π_a' e^{−D(f_a‖f_a')} − H(f_a) − log Σ_b ω_b t_ab ].

  Derivation: E_f[log g] ≤ Σ_a π_a log Σ_b ω_b t_ab (Jensen, log concave) and
  E_{f_a}[log f] ≥ log Σ_a' π_a' exp(E_{f_a}[log f_a']) (Jensen, log-sum-exp convex), with
  E_{f_a}[log f_a'] = −H(f_a) − D(f_a ‖ f_a'). The bound can be negative; KL ≥ 0 regardless.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.

  Returns:
    The lower bound, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_lower_bound(p, q)):.3f}")
    0.241
  """
  return _lower_bound(*_mixtures(p, q))


def kl_divergence_mixture_upper_bound(
  p: Distribution, q: Distribution, *, num_iterations: int = 50
) -> jax.Array:
  """Variational upper bound on KL(p ‖ q) for Gaussian mixtures (Hershey & Olsen 2007, §7).

  For any φ_ab, ψ_ab ≥ 0 with Σ_b φ_ab = π_a and Σ_a ψ_ab = ω_b (the chain rule for KL):

      KL(p ‖ q) ≤ D_φψ = Σ_ab φ_ab [ log(φ_ab / ψ_ab) + D(f_a ‖ g_b) ].

  The bound is tightened by `num_iterations` rounds of the alternating closed-form updates
  φ_ab = π_a ψ_ab e^{−D_ab} / Σ_b' ψ_ab' e^{−D_ab'} and ψ_ab = ω_b φ_ab / Σ_a' φ_a'b, starting
  from φ = ψ = π ωᵀ; every iterate is a valid bound and none is looser than the previous one.

  Args:
    p: a Gaussian mixture (`MixtureSameFamily` of `Normal` or multivariate-normal components,
      distrax or TFP) or a single Gaussian (a one-component mixture).
    q: likewise, with the same event shape.
    num_iterations: rounds of the alternating updates (each gives a bound no looser than the
      one before).

  Returns:
    The upper bound, in nats, with the broadcast batch shape of `p` and `q`.

  Examples:
    >>> import distrax, jax.numpy as jnp, klax
    >>> p = distrax.MixtureSameFamily(distrax.Categorical(probs=jnp.array([0.5, 0.5])),
    ...                               distrax.Normal(jnp.array([-3.0, 3.0]), 1.2))
    >>> q = distrax.Normal(0.0, 3.2311)  # The exact KL(p ‖ q) is 0.3146 (quadrature).
    >>> print(f"{float(klax.kl_divergence_mixture_upper_bound(p, q)):.3f}")
    0.991
  """
  if not isinstance(num_iterations, int) or num_iterations < 0:
    raise ValueError(f"`num_iterations` must be a non-negative int, got {num_iterations!r}.")
  return _upper_bound(*_mixtures(p, q), num_iterations=num_iterations)
