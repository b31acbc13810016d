"""Families: maps from unconstrained parameters to distributions, for fitting.

A family is a pair of pure functions, `Family(init, dist)`:

- `init(key) -> params` draws sensible random starting parameters (a pytree of float arrays);
- `dist(params) -> distribution` builds a distrax distribution from any real-valued parameters.

Any pair of functions with these signatures is a family; the constructors here cover the usual
ones. Parameters are unconstrained (scales through `exp` or `softplus`), so any optax optimiser
can move them freely, and batches of them can be stacked along a leading axis for
`klax.fit_batch`.

A conditional family, `ConditionalFamily(init, dist)` with `dist(params, x)`, is an amortised
posterior q_φ(z | x) (a VAE's encoder), for `klax.amortized_elbo_loss` and `klax.amortized_iwae_loss`.
"""

from klax._amortized import ConditionalFamily
from klax._families_conditional import conditional_diag_normal
from klax._families_flow import flow
from klax._families_gaussian import diag_normal
from klax._families_gaussian import full_rank_normal
from klax._families_gaussian import mixture_of_normals
from klax._families_gaussian import normal
from klax._family import Family
from klax._family import init_batch

__all__ = [
  "ConditionalFamily",
  "Family",
  "conditional_diag_normal",
  "diag_normal",
  "flow",
  "full_rank_normal",
  "init_batch",
  "mixture_of_normals",
  "normal",
]
