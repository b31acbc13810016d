"""Array-level formulas for Gaussians, shared by the closed forms and the mixture bounds.

Every function takes means of shape [..., d] and lower Cholesky factors of the covariances of
shape [..., d, d], and broadcasts over the leading axes.
"""

from __future__ import annotations

import functools
import math

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
  """Log |Σ| = 2 Σ_i log L_ii for Σ = L Lᵀ."""
  return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


@functools.partial(jax.jit, static_argnames="lapack")
def kl(
  mean_p: jax.Array, chol_p: jax.Array, mean_q: jax.Array, chol_q: jax.Array, lapack: bool = False
) -> jax.Array:
  """KL(N(m_p, Σ_p) ‖ N(m_q, Σ_q)).

  = ½ [tr(Σ_q⁻¹ Σ_p) + (m_q − m_p)ᵀ Σ_q⁻¹ (m_q − m_p) − d + log|Σ_q| − log|Σ_p|],
  computed from Cholesky factors. With M = L_q⁻¹ L_p (lower triangular) and u_i = log M_ii =
  log(L_p,ii / L_q,ii), tr(Σ_q⁻¹ Σ_p) − d + log|Σ_q| − log|Σ_p| = Σ_{i≠j} M_ij² +
  Σ_i (e^{2u_i} − 1 − 2u_i): every term is non-negative and is evaluated as such (expm1), so
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
  u = jnp.log(diagonal(chol_p) / diagonal(chol_q))
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
