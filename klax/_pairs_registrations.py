"""Registers klax's cross-family pairs (`_pairs_continuous`, `_pairs_support`) with TFP.

As in `klax._registrations`, importing klax registers them with `tfp.distributions.RegisterKL`,
so `tfd.kl_divergence`, distrax's `Distribution.kl_divergence` and `klax.kl_divergence` see them.
TFP resolves a pair along both classes' hierarchies, so tfd.Exponential (a tfd.Gamma) meets every
rule registered for tfd.Gamma. Chi2 and Exponential are Gammas for the Gamma rules, also against
distrax.Gamma (Chi2 ‖ distrax.Gamma and back by klax's Gamma form).
"""

from __future__ import annotations

from tensorflow_probability.substrates import jax as tfp

from klax import _pair_params as params
from klax import _pairs_continuous as cont
from klax import _pairs_continuous_bernoulli as cb
from klax import _pairs_support as support

tfd = tfp.distributions

# (p's types, q's types, rule): the cross pairs klax adds.
PAIRS = [
  (params.GAMMA, params.NORMAL, cont.kl_gamma_normal),
  (params.GAMMA, params.GUMBEL, cont.kl_gamma_gumbel),
  (params.BETA, params.NORMAL, cont.kl_beta_normal),
  (params.BETA, params.GAMMA, cont.kl_beta_gamma),
  (params.GUMBEL, params.NORMAL, cont.kl_gumbel_normal),
  (params.NORMAL, params.GUMBEL, cont.kl_normal_gumbel),
  (params.UNIFORM, params.NORMAL, cont.kl_uniform_normal),
  (params.UNIFORM, params.GUMBEL, cont.kl_uniform_gumbel),
  (params.UNIFORM, params.GAMMA, cont.kl_uniform_gamma),
  (params.UNIFORM, params.BETA, cont.kl_uniform_beta),
  (params.UNIFORM, params.PARETO, cont.kl_uniform_pareto),
  (params.PARETO, params.GAMMA, cont.kl_pareto_gamma),
  (params.PARETO, params.NORMAL, cont.kl_pareto_normal),
  ((tfd.InverseGamma,), (tfd.InverseGamma,), cont.kl_inverse_gamma),
  (params.BERNOULLI, params.POISSON, cont.kl_bernoulli_poisson),
  (params.BETA, params.UNIFORM, support.kl_beta_uniform),
  (params.GAMMA, params.GAMMA, cont.kl_gamma_gamma),
  (params.CONTINUOUS_BERNOULLI, params.NORMAL, cb.kl_cb_normal),
  (params.CONTINUOUS_BERNOULLI, params.EXPONENTIAL, cb.kl_cb_exponential),
  (params.CONTINUOUS_BERNOULLI, params.UNIFORM, cb.kl_cb_uniform),
  (params.BETA, params.CONTINUOUS_BERNOULLI, cb.kl_beta_cb),
  (params.UNIFORM, params.CONTINUOUS_BERNOULLI, cb.kl_uniform_cb),
  *[(types_p, types_q, support.kl_infinite) for types_p, types_q in support.INFINITE],
]


def _register(type_a, type_b, kl_fn) -> None:
  try:
    tfd.RegisterKL(type_a, type_b)(kl_fn)
  except ValueError:  # Already registered (by TFP itself, or a reload).
    pass


for _types_p, _types_q, _rule in PAIRS:
  for _type_p in _types_p:
    for _type_q in _types_q:
      _register(_type_p, _type_q, _rule)
