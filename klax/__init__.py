"""klax: KL divergence, entropy, cross-entropy and the ELBO in JAX, and fitting by minimising them.

Every divergence takes `p` first and means D(p ‖ q) = E_p[log p − log q].
"""

from klax import _registrations  # noqa: F401  (registers klax's closed forms with TFP)
from klax import families
from klax._amortized import AmortizedELBOLoss
from klax._amortized import AmortizedIWAELoss
from klax._amortized import ConditionalFamily
from klax._amortized import amortized_elbo_loss
from klax._amortized import amortized_iwae_loss
from klax._basins import Basin
from klax._basins import basin_report
from klax._closed_form import UnsupportedDistributionError
from klax._closed_form import cross_entropy
from klax._closed_form import entropy
from klax._closed_form import kl_divergence
from klax._diagnostics import ReverseKLDiagnostics
from klax._diagnostics import pareto_shape
from klax._diagnostics import reverse_kl_diagnostics
from klax._discrete import cross_entropy_logits
from klax._discrete import cross_entropy_probs
from klax._discrete import entropy_logits
from klax._discrete import entropy_probs
from klax._discrete import kl_divergence_logits
from klax._discrete import kl_divergence_probs
from klax._exponential_family import kl_divergence_exponential_family
from klax._fit import FitResult
from klax._fit import fit
from klax._fit_batch import fit_batch
from klax._fit_step import FitState
from klax._fit_step import StepInfo
from klax._fit_step import fit_init
from klax._fit_step import fit_step
from klax._gradients import gradient_variance
from klax._grid import kl_divergence_grid
from klax._knn import entropy_knn
from klax._knn import kl_divergence_knn
from klax._linear import cross_entropy_linear
from klax._linear import entropy_linear
from klax._linear import jensen_shannon_linear
from klax._linear import kl_divergence_linear
from klax._losses import ForwardKLLoss
from klax._losses import IWAELoss
from klax._losses import RenyiLoss
from klax._losses import ReverseKLLoss
from klax._losses import score_function_surrogate
from klax._losses import variational_draws
from klax._mixtures import kl_divergence_mixture_lower_bound
from klax._mixtures import kl_divergence_mixture_matched_bound_approx
from klax._mixtures import kl_divergence_mixture_product_approx
from klax._mixtures import kl_divergence_mixture_upper_bound
from klax._mixtures import kl_divergence_mixture_variational_approx
from klax._monte_carlo import Estimate
from klax._monte_carlo import cross_entropy_mc
from klax._monte_carlo import entropy_mc
from klax._monte_carlo import kl_divergence_mc
from klax._monte_carlo import kl_from_log_ratio
from klax._objectives import elbo
from klax._objectives import forward_kl_loss
from klax._objectives import iwae_loss
from klax._objectives import renyi_loss
from klax._objectives import reverse_kl_loss
from klax._policy_kl import KLPenalty
from klax._policy_kl import kl_estimator_loss
from klax._policy_kl import kl_penalty
from klax._policy_tokens import reduce_sequence
from klax._policy_tokens import reduce_tokens
from klax._policy_tokens import token_log_probs
from klax._variational import WeightedDraws
from klax.families import Family

__version__ = "0.1.0"

__all__ = (
  "AmortizedELBOLoss",
  "AmortizedIWAELoss",
  "Basin",
  "ConditionalFamily",
  "Estimate",
  "Family",
  "FitResult",
  "FitState",
  "ForwardKLLoss",
  "IWAELoss",
  "KLPenalty",
  "RenyiLoss",
  "ReverseKLDiagnostics",
  "ReverseKLLoss",
  "StepInfo",
  "UnsupportedDistributionError",
  "WeightedDraws",
  "amortized_elbo_loss",
  "amortized_iwae_loss",
  "basin_report",
  "cross_entropy",
  "cross_entropy_linear",
  "cross_entropy_logits",
  "cross_entropy_mc",
  "cross_entropy_probs",
  "elbo",
  "entropy",
  "entropy_knn",
  "entropy_linear",
  "entropy_logits",
  "entropy_mc",
  "entropy_probs",
  "families",
  "fit",
  "fit_batch",
  "fit_init",
  "fit_step",
  "forward_kl_loss",
  "gradient_variance",
  "iwae_loss",
  "jensen_shannon_linear",
  "kl_divergence",
  "kl_divergence_exponential_family",
  "kl_divergence_grid",
  "kl_divergence_knn",
  "kl_divergence_linear",
  "kl_divergence_logits",
  "kl_divergence_mc",
  "kl_divergence_mixture_lower_bound",
  "kl_divergence_mixture_matched_bound_approx",
  "kl_divergence_mixture_product_approx",
  "kl_divergence_mixture_upper_bound",
  "kl_divergence_mixture_variational_approx",
  "kl_divergence_probs",
  "kl_estimator_loss",
  "kl_from_log_ratio",
  "kl_penalty",
  "pareto_shape",
  "reduce_sequence",
  "reduce_tokens",
  "renyi_loss",
  "reverse_kl_diagnostics",
  "reverse_kl_loss",
  "score_function_surrogate",
  "token_log_probs",
  "variational_draws",
)
