"""Array-level formulas for Gaussians, shared by the closed forms and the mixture bounds.

Every function takes means of shape [..., d] and lower Cholesky factors of the covariances of
shape [..., d, d], and broadcasts over the leading axes.
"""

from __future__ import annotations

import functools
import math

import distrax
import jax
import jax.numpy as jnp


@jax.jit
def cholesky(matrix: jax.Array) -> jax.Array:
  """Lower Cholesky factor of a batch of symmetric positive-definite matrices, in pure XLA.

  Column by column: L[:, j] = (A[:, j] − L L[j, :]ᵀ) / L_jj, with L_jj = √(A_jj − ‖L[j, :j]‖²).
  klax avoids `jnp.linalg.cholesky` and `solve_triangular` for batches: on CPU they call LAPACK
  kernels that jaxlib 0.10 runs through a parallel batch map, and two such kernels running at
  once were seen to deadlock on a 2-core machine. The loop is also faster for small d.
  """
  d = matrix.shape[-1]
  rows = jnp.arange(d)

  def column(j, chol):
    residual = matrix[..., :, j] - jnp.einsum("...ik,...k->...i", chol, chol[..., j, :])
    diagonal = jnp.sqrt(residual[..., j])
    values = jnp.where(rows >= j, residual / diagonal[..., None], 0.0)
    return chol.at[..., :, j].set(values)

  return jax.lax.fori_loop(0, d, column, jnp.zeros_like(matrix))


def _broadcast_solve(chol: jax.Array, rhs: jax.Array) -> jax.Array:
  """L⁻¹ · rhs for lower-triangular `chol` [..., d, d] and `rhs` [..., d, k].

  Forward substitution in pure XLA, broadcasting the leading axes of both (see `cholesky`).
  """
  batch = jnp.broadcast_shapes(chol.shape[:-2], rhs.shape[:-2])
  chol = jnp.broadcast_to(chol, batch + chol.shape[-2:])
  rhs = jnp.broadcast_to(rhs, batch + rhs.shape[-2:])

  def row(i, solution):
    partial = jnp.einsum("...j,...jk->...k", chol[..., i, :], solution)
    return solution.at[..., i, :].set((rhs[..., i, :] - partial) / chol[..., i, i][..., None])

  return jax.lax.fori_loop(0, chol.shape[-1], row, jnp.zeros_like(rhs))


@jax.jit
def log_det(chol: jax.Array) -> jax.Array:
  """Log |Σ| = 2 Σ_i log |L_ii| for Σ = L Lᵀ (L triangular, its diagonal of any signs)."""
  return 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol, axis1=-2, axis2=-1))), axis=-1)


@functools.partial(jax.jit, static_argnames="lapack")
def kl(
  mean_p: jax.Array, chol_p: jax.Array, mean_q: jax.Array, chol_q: jax.Array, lapack: bool = False
) -> jax.Array:
  """KL(N(m_p, Σ_p) ‖ N(m_q, Σ_q)).

  = ½ [tr(Σ_q⁻¹ Σ_p) + (m_q − m_p)ᵀ Σ_q⁻¹ (m_q − m_p) − d + log|Σ_q| − log|Σ_p|],
  computed from lower-triangular factors (Σ = L Lᵀ; a negative diagonal entry is allowed, as in
  TFP). With M = L_q⁻¹ L_p (lower triangular) and u_i = log |M_ii| = log |L_p,ii / L_q,ii|,
  tr(Σ_q⁻¹ Σ_p) − d + log|Σ_q| − log|Σ_p| = Σ_{i≠j} M_ij² + Σ_i (e^{2u_i} − 1 − 2u_i): every term is non-negative and is evaluated as such (expm1), so
  the KL is never negative, is exactly 0 for p = q, and takes logs of ratios rather than
  differences of logs (no cancellation at large or small scales).

  M and L_q⁻¹(m_q − m_p) come from one triangular solve with d + 1 right-hand sides: by forward
  substitution in XLA, or with `lapack=True` by one LAPACK kernel (faster from d ≈ 8 on; a
  single kernel per call, since two running at once can deadlock jaxlib 0.10 on CPU).
  """
  d = mean_p.shape[-1]
  batch = jnp.broadcast_shapes(
    chol_p.shape[:-2], chol_q.shape[:-2], mean_p.shape[:-1], mean_q.shape[:-1]
  )
  rhs = jnp.concatenate(
    [
      jnp.broadcast_to(chol_p, (*batch, d, d)),
      jnp.broadcast_to(mean_q - mean_p, (*batch, d))[..., None],
    ],
    axis=-1,
  )
  chol_q_batch = jnp.broadcast_to(chol_q, (*batch, d, d))
  if lapack:
    solution = jax.lax.linalg.triangular_solve(chol_q_batch, rhs, left_side=True, lower=True)
  else:
    solution = _broadcast_solve(chol_q_batch, rhs)
  m, z = solution[..., :d], solution[..., d]
  off_diagonal = jnp.sum(jnp.where(jnp.eye(d, dtype=bool), 0.0, m) ** 2, axis=(-2, -1))
  diagonal = functools.partial(jnp.diagonal, axis1=-2, axis2=-1)
  u = jnp.log(jnp.abs(diagonal(chol_p) / diagonal(chol_q)))  # Any signs: Σ = L Lᵀ.
  return 0.5 * (off_diagonal + jnp.sum(jnp.expm1(2 * u) - 2 * u, axis=-1) + jnp.sum(z**2, axis=-1))


@jax.jit
def entropy(chol: jax.Array) -> jax.Array:
  """H(N(m, Σ)) = ½ (d log(2πe) + log|Σ|)."""
  d = chol.shape[-1]
  return 0.5 * (d * math.log(2 * math.pi * math.e) + log_det(chol))


@jax.jit
def log_overlap(mean_a: jax.Array, cov_a: jax.Array, mean_b: jax.Array, cov_b: jax.Array):
  """Log ∫ N(x; m_a, Σ_a) N(x; m_b, Σ_b) dx = log N(m_a; m_b, Σ_a + Σ_b)."""
  d = mean_a.shape[-1]
  chol = cholesky(cov_a + cov_b)
  z = _broadcast_solve(chol, (mean_a - mean_b)[..., None])
  return -0.5 * (d * math.log(2 * math.pi) + log_det(chol) + jnp.sum(z**2, axis=(-2, -1)))


# Distribution-level forms (klax's registrations and overrides).


def _lower_scale(d) -> jax.Array:
  """The lower-triangular scale L (Σ = L Lᵀ) of a (lower) Tri or Diag multivariate normal."""
  if isinstance(d, distrax.MultivariateNormalTri):
    return d.scale_tri
  if isinstance(d, distrax.MultivariateNormalDiag):
    return d.scale_diag[..., None] * jnp.eye(d.event_shape[-1], dtype=d.scale_diag.dtype)
  return d.scale.to_dense()  # TFP's MultivariateNormalTriL and MultivariateNormalDiag.


def kl_scaled_mvn(a, b, name=None):
  """KL between multivariate normals from their lower-triangular scales.

  No covariance is formed (scales of 1e±20 stay representable in float32) and none is factorised
  again; KL(p ‖ p) is exactly 0.
  """
  del name
  lapack = a.event_shape[-1] >= 8  # One LAPACK solve beats forward substitution from d ≈ 8.
  scales, means = (_lower_scale(a), _lower_scale(b)), (a.mean(), b.mean())
  valid = True
  for scale, mean in zip(scales, means, strict=True):
    diagonal = jnp.diagonal(scale, axis1=-2, axis2=-1)
    valid = valid & jnp.all(jnp.isfinite(mean), -1) & jnp.all(jnp.isfinite(scale), (-2, -1))
    valid = valid & jnp.all(diagonal != 0, -1)  # A singular scale: no density.
  value = kl(means[0], scales[0], means[1], scales[1], lapack=lapack)
  return jnp.where(valid, value, jnp.nan)


def kl_mvn_mvn(a, b, name=None):
  del name
  return kl(
    a.mean(),
    cholesky(a.covariance()),
    b.mean(),
    cholesky(b.covariance()),
  )
