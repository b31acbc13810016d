"""Normalising-flow family: rational-quadratic spline couplings over a standard normal base."""

from __future__ import annotations

import itertools

import distrax
import jax
import jax.numpy as jnp

from klax import _checks
from klax._family import Family
from klax._family import cached


def _mlp_init(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  layers = []
  for i, (key_i, (n_in, n_out)) in enumerate(zip(keys, itertools.pairwise(sizes), strict=True)):
    last = i == len(sizes) - 2
    scale = (
      0.0 if last else 1.0 / jnp.sqrt(n_in)
    )  # The last layer starts at zero: a near-identity flow.
    layers.append({"w": scale * jax.random.normal(key_i, (n_in, n_out)), "b": jnp.zeros((n_out,))})
  return layers


def _mlp_apply(layers, x):
  for layer in layers[:-1]:
    x = jax.nn.gelu(x @ layer["w"] + layer["b"])
  return x @ layers[-1]["w"] + layers[-1]["b"]


@cached
def flow(
  d: int,
  *,
  num_layers: int = 4,
  num_bins: int = 8,
  hidden_size: int = 32,
  spline_range: float = 6.0,
) -> Family:
  """A normalising flow: rational-quadratic spline couplings over a standard normal base.

  q(x) = N(z; 0, I) |det ∂z/∂x| with x = A(f_L(… f_1(z))): each f_l is a distrax
  `MaskedCoupling` whose `RationalQuadraticSpline` (on [−spline_range, spline_range], identity
  outside) is conditioned on the other half of the coordinates by a small MLP; A is a learned
  elementwise affine map. Splines are invertible in closed form, so the flow samples with
  reparameterised gradients (reverse KL) and evaluates `log_prob` exactly (forward KL). In 1-D the
  splines are unconditional. Starts near the identity (the MLPs' last layers are zero).

  Args:
    d: the dimension.
    num_layers: the number of coupling layers.
    num_bins: spline bins per coordinate.
    hidden_size: width of the conditioner MLPs.
    spline_range: the splines act on [−spline_range, spline_range].

  Returns:
    A `Family(init, dist)`: `init(key)` draws starting parameters, `dist(params)` builds the
    distrax distribution.

  Examples:
    >>> import jax, klax
    >>> family = klax.families.flow(2, num_layers=2)
    >>> q = family.dist(family.init(jax.random.key(0)))
    >>> x, log_q = q.sample_and_log_prob(seed=jax.random.key(1), sample_shape=(4,))
    >>> x.shape, log_q.shape
    ((4, 2), (4,))
  """
  d = _checks.positive_int(d, "d")
  num_layers = _checks.positive_int(num_layers, "num_layers")
  num_params = 3 * num_bins + 1

  def spline(params):
    return distrax.RationalQuadraticSpline(params, range_min=-spline_range, range_max=spline_range)

  def init(key):
    key_shift, *layer_keys = jax.random.split(key, num_layers + 1)
    if d == 1:
      layers = [{"spline": jnp.zeros((1, num_params))} for _ in layer_keys]
    else:
      sizes = [d, hidden_size, hidden_size, d * num_params]
      layers = [_mlp_init(k, sizes) for k in layer_keys]
    return {
      "shift": 0.1 * jax.random.normal(key_shift, (d,)),
      "log_scale": jnp.zeros((d,)),
      "layers": layers,
    }

  def coupling(layer_params, parity):
    mask = (jnp.arange(d) % 2) == parity

    def conditioner(x):
      return _mlp_apply(layer_params, x).reshape(*x.shape[:-1], d, num_params)

    return distrax.MaskedCoupling(mask=mask, conditioner=conditioner, bijector=spline)

  def dist(params):
    if d == 1:
      layers = [distrax.Block(spline(layer["spline"]), 1) for layer in params["layers"]]
    else:
      layers = [coupling(layer, i % 2) for i, layer in enumerate(params["layers"])]
    affine = distrax.Block(distrax.ScalarAffine(params["shift"], jnp.exp(params["log_scale"])), 1)
    base = distrax.MultivariateNormalDiag(jnp.zeros((d,)), jnp.ones((d,)))
    # distrax.Chain applies its last bijector first: the couplings act on z, then the affine map.
    return distrax.Transformed(base, distrax.Chain([affine, *reversed(layers)]))

  return Family(init, dist)
