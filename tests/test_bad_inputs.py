"""Bad input gets a clear error naming the argument; the README's table is checked against this list.

Each case: (function, what is wrong, call, expected exception, text the message must contain).
"""

import re
from pathlib import Path

import distrax
import jax
import jax.numpy as jnp
import optax
import pytest
from tensorflow_probability.substrates import jax as tfp

import klax

tfd = tfp.distributions
KEY = jax.random.key(0)
N01 = distrax.Normal(0.0, 1.0)
HALF = jnp.array([0.5, 0.5])
LOSS = klax.reverse_kl_loss(klax.families.normal(), lambda x: -0.5 * x**2, 4)
PARAMS = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
DIAG_PARAMS = klax.families.diag_normal(2).init(KEY)
CATEGORICAL_FAMILY = klax.Family(
  init=lambda key: {"logits": jnp.zeros(3)},
  dist=lambda params: distrax.Categorical(logits=params["logits"]),
)

CASES = [
  (
    "kl_divergence_probs",
    "p and q of different shapes",
    lambda: klax.kl_divergence_probs(jnp.ones(3) / 3, HALF),
    ValueError,
    "`p` and `q` must have the same shape",
    "error",
  ),
  (
    "kl_divergence_probs",
    "integer input",
    lambda: klax.kl_divergence_probs(HALF, jnp.array([1, 0])),
    TypeError,
    "`q` must have a floating-point dtype",
    "error",
  ),
  (
    "kl_divergence_probs",
    "negative probabilities",
    lambda: klax.kl_divergence_probs(jnp.array([-0.5, 1.5]), HALF),
    ValueError,
    "`p` must hold probabilities",
    "NaN",
  ),
  (
    "kl_divergence_probs",
    "probabilities not summing to 1",
    lambda: klax.kl_divergence_probs(HALF, jnp.array([0.5, 0.6])),
    ValueError,
    "`q` must hold probabilities",
    "NaN",
  ),
  (
    "kl_divergence_probs",
    "NaN input",
    lambda: klax.kl_divergence_probs(jnp.array([jnp.nan, 1.0]), HALF),
    ValueError,
    "not NaN",
    "NaN",
  ),
  (
    "kl_divergence_logits",
    "no outcome along axis",
    lambda: klax.kl_divergence_logits(jnp.zeros((2, 0)), jnp.zeros((2, 0))),
    ValueError,
    "`p_logits` must have at least one outcome",
    "error",
  ),
  (
    "kl_divergence_logits",
    "`where` that does not broadcast",
    lambda: klax.kl_divergence_logits(jnp.zeros(3), jnp.zeros(3), where=jnp.ones(2, bool)),
    ValueError,
    "`where` of shape (2,) does not broadcast",
    "error",
  ),
  (
    "entropy_logits",
    "`where` that is not boolean",
    lambda: klax.entropy_logits(jnp.zeros(3), where=jnp.ones(3)),
    TypeError,
    "`where` must be a boolean mask",
    "error",
  ),
  (
    "entropy_logits",
    "axis out of range",
    lambda: klax.entropy_logits(jnp.zeros((2, 2)), axis=2),
    ValueError,
    "`axis`=2 is out of range",
    "error",
  ),
  (
    "kl_divergence_logits",
    "non-array input",
    lambda: klax.kl_divergence_logits("logits", HALF),
    TypeError,
    "`p_logits` must be an array of floats",
    "error",
  ),
  (
    "kl_divergence",
    "not a distribution",
    lambda: klax.kl_divergence(N01, 1.0),
    TypeError,
    "`q` must be a distrax or TFP-on-JAX distribution",
    "error",
  ),
  (
    "kl_divergence",
    "different event shapes",
    lambda: klax.kl_divergence(
      distrax.MultivariateNormalDiag(jnp.zeros(2)), distrax.MultivariateNormalDiag(jnp.zeros(3))
    ),
    ValueError,
    "same event shape",
    "error",
  ),
  (
    "kl_divergence",
    "pair with no closed form",
    lambda: klax.kl_divergence(distrax.Logistic(0.0, 1.0), N01),
    klax.UnsupportedDistributionError,
    "kl_divergence_mc",
    "error",
  ),
  (
    "kl_divergence",
    "Binomials with different total_count",
    lambda: klax.kl_divergence(tfd.Binomial(3.0, probs=0.5), tfd.Binomial(4.0, probs=0.5)),
    ValueError,
    "same `total_count`",
    "NaN",
  ),
  (
    "entropy",
    "distribution with no closed-form entropy",
    lambda: klax.entropy(tfd.Binomial(3.0, probs=0.5)),
    klax.UnsupportedDistributionError,
    "entropy_mc",
    "error",
  ),
  (
    "kl_divergence_mc",
    "num_samples <= 0",
    lambda: klax.kl_divergence_mc(N01, N01, KEY, 0),
    ValueError,
    "`num_samples` must be positive",
    "error",
  ),
  (
    "kl_divergence_mc",
    "unknown estimator",
    lambda: klax.kl_divergence_mc(N01, N01, KEY, 10, estimator="k4"),
    ValueError,
    "`estimator` must be one of",
    "error",
  ),
  (
    "kl_from_log_ratio",
    "unknown estimator",
    lambda: klax.kl_from_log_ratio(jnp.zeros(2), "kl"),
    ValueError,
    "`estimator` must be one of",
    "error",
  ),
  (
    "kl_divergence_knn",
    "k >= n",
    lambda: klax.kl_divergence_knn(jnp.zeros((5, 2)), jnp.ones((9, 2)), k=5),
    ValueError,
    "`k` must satisfy k < n",
    "error",
  ),
  (
    "kl_divergence_knn",
    "x and y of different dimensions",
    lambda: klax.kl_divergence_knn(jnp.zeros((5, 2)), jnp.zeros((5, 3))),
    ValueError,
    "same dimension",
    "error",
  ),
  (
    "kl_divergence_grid",
    "values not one per grid point",
    lambda: klax.kl_divergence_grid(jnp.zeros(3), jnp.zeros(4), jnp.arange(4.0)),
    ValueError,
    "`log_p` must give one value per grid point",
    "error",
  ),
  (
    "kl_divergence_grid",
    "2-D grid with normalize=False",
    lambda: klax.kl_divergence_grid(jnp.zeros(4), jnp.zeros(4), jnp.zeros((4, 2)), normalize=False),
    ValueError,
    "1-D grid",
    "error",
  ),
  (
    "kl_divergence_exponential_family",
    "natural parameters of different structure",
    lambda: klax.kl_divergence_exponential_family(jnp.exp, {"a": 1.0}, [1.0]),
    ValueError,
    "same pytree structure",
    "error",
  ),
  (
    "kl_divergence_mixture_*",
    "non-Gaussian components",
    lambda: klax.kl_divergence_mixture_upper_bound(N01, distrax.Laplace(0.0, 1.0)),
    TypeError,
    "`q` must be a Gaussian mixture",
    "error",
  ),
  (
    "reverse_kl_loss",
    "unknown gradient estimator",
    lambda: klax.reverse_kl_loss(klax.families.normal(), lambda x: x, 4, gradient="pathwise"),
    ValueError,
    "`gradient` must be one of",
    "error",
  ),
  (
    "reverse_kl_loss",
    "score gradient with one sample",
    lambda: klax.reverse_kl_loss(klax.families.normal(), lambda x: x, 1, gradient="score"),
    ValueError,
    "`num_samples` must be >= 2",
    "error",
  ),
  (
    "forward_kl_loss",
    "integer data",
    lambda: klax.forward_kl_loss(klax.families.normal(), jnp.arange(3)),
    TypeError,
    "`data` must have a floating-point dtype",
    "error",
  ),
  (
    "fit",
    "optimizer that is not optax",
    lambda: klax.fit(LOSS, PARAMS, "adam", KEY, 10),
    TypeError,
    "`optimizer` must be an optax GradientTransformation",
    "error",
  ),
  (
    "fit",
    "trace_every not dividing num_steps",
    lambda: klax.fit(LOSS, PARAMS, optax.adam(0.1), KEY, 10, trace_every=3),
    ValueError,
    "`trace_every`=3 must divide",
    "error",
  ),
  (
    "fit",
    "gradient_variance_draws = 1",
    lambda: klax.fit(LOSS, PARAMS, optax.adam(0.1), KEY, 10, gradient_variance_draws=1),
    ValueError,
    "`gradient_variance_draws` must be 0 (off) or at least 2",
    "error",
  ),
  (
    "fit_batch",
    "leaves with different batch sizes",
    lambda: klax.fit_batch(
      LOSS, {"loc": jnp.zeros(2), "log_scale": jnp.zeros(3)}, optax.adam(0.1), KEY, 10
    ),
    ValueError,
    "same leading (batch) axis",
    "host",
  ),
  (
    "kl_divergence",
    "Categoricals with different numbers of categories",
    lambda: klax.kl_divergence(
      tfd.Categorical(logits=jnp.zeros(3)), tfd.Categorical(logits=jnp.zeros(4))
    ),
    ValueError,
    "needs the same number of categories, got 3 in p and 4 in q",
    "error",
  ),
  (
    "kl_divergence_exponential_family",
    "natural parameters of different shapes",
    lambda: klax.kl_divergence_exponential_family(
      lambda e: jnp.sum(jnp.exp(e)), jnp.zeros(2), jnp.zeros(1)
    ),
    ValueError,
    "must have the same shapes, leaf by leaf",
    "error",
  ),
  (
    "kl_divergence_knn",
    "points with no coordinates (d = 0)",
    lambda: klax.kl_divergence_knn(jnp.zeros((10, 0)), jnp.zeros((10, 0))),
    ValueError,
    "`x` must have at least one coordinate per point",
    "error",
  ),
  (
    "kl_divergence_mc",
    "a key that is not a jax.random key",
    lambda: klax.kl_divergence_mc(N01, distrax.Normal(1.0, 1.0), 0, 10),
    TypeError,
    "`key` must be a `jax.random` key",
    "error",
  ),
  (
    "forward_kl_loss",
    "empty data",
    lambda: klax.forward_kl_loss(klax.families.normal(), jnp.zeros(0)),
    ValueError,
    "`data` must hold at least one sample",
    "error",
  ),
  (
    "forward_kl_loss",
    "data whose points do not match the event shape",
    lambda: klax.forward_kl_loss(klax.families.diag_normal(2), jnp.zeros((3, 1)))(DIAG_PARAMS, KEY),
    ValueError,
    "`data` must have shape [n, *event_shape] = [n, 2]",
    "error",
  ),
  (
    "reverse_kl_loss",
    "log_density that is not scalar for one point",
    lambda: klax.reverse_kl_loss(klax.families.normal(), lambda x: jnp.zeros(1), 4)(PARAMS, KEY),
    ValueError,
    "`log_density` must return a scalar",
    "error",
  ),
  (
    "reverse_kl_loss",
    "pathwise gradient through a discrete q",
    lambda: klax.reverse_kl_loss(CATEGORICAL_FAMILY, lambda x: 0.0, 4)(
      {"logits": jnp.zeros(3)}, KEY
    ),
    ValueError,
    "whose samples are not reparameterised",
    "error",
  ),
  (
    "renyi_loss",
    "alpha outside [0, 1]",
    lambda: klax.renyi_loss(klax.families.normal(), lambda x: -(x**2), 4, -1.0),
    ValueError,
    "`alpha` must be in [0, 1]",
    "error",
  ),
  (
    "fit_batch",
    "an empty batch",
    lambda: klax.fit_batch(
      LOSS, {"loc": jnp.zeros(0), "log_scale": jnp.zeros(0)}, optax.adam(0.1), KEY, 2
    ),
    ValueError,
    "`params_batch` has no members",
    "host",
  ),
  (
    "fit_batch",
    "chunk_size = 0",
    lambda: klax.fit_batch(
      LOSS, jax.tree.map(lambda x: x[None], PARAMS), optax.adam(0.1), KEY, 2, chunk_size=0
    ),
    ValueError,
    "`chunk_size` must be positive",
    "host",
  ),
  (
    "pareto_shape",
    "fewer than 25 weights",
    lambda: klax.pareto_shape(jnp.zeros(10)),
    ValueError,
    "S >= 25",
    "error",
  ),
  (
    "gradient_variance",
    "num_draws < 2",
    lambda: klax.gradient_variance(LOSS, PARAMS, KEY, 1),
    ValueError,
    "at least 2",
    "error",
  ),
  (
    "basin_report",
    "tolerance that is NaN",
    lambda: klax.basin_report(
      klax.FitResult(PARAMS, jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32)), tolerance=float("nan")
    ),
    ValueError,
    "`tolerance` must be positive and finite",
    "host",
  ),
  (
    "basin_report",
    "tolerance <= 0",
    lambda: klax.basin_report(
      klax.FitResult(PARAMS, jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32)), tolerance=0.0
    ),
    ValueError,
    "`tolerance` must be positive",
    "host",
  ),
]

JIT_BEHAVIOUR = {
  "error": "same error (raised while tracing)",
  "NaN": "NaN result",
  "host": "not jittable (a host-level driver)",
}


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_raises_a_clear_error(case):
  _, _, call, error, message, _ = case
  with pytest.raises(error, match=re.escape(message)):
    call()


@pytest.mark.parametrize(
  "case",
  [c for c in CASES if c[5] != "host"],
  ids=[f"{c[0]}: {c[1]}" for c in CASES if c[5] != "host"],
)
def test_the_same_input_inside_jit(case):
  _, _, call, error, message, inside = case
  traced = jax.jit(lambda: call())  # Arrays closed over become traced values inside jit.
  if inside == "error":
    with pytest.raises(error, match=re.escape(message)):
      traced()
  else:
    assert bool(jnp.all(jnp.isnan(traced())))


def markdown_table() -> str:
  rows = ["| function | bad input | outside `jit` | inside `jit` |", "|---|---|---|---|"]
  for function, what, _, error, _, inside in CASES:
    rows.append(f"| `{function}` | {what} | `{error.__name__}` | {JIT_BEHAVIOUR[inside]} |")
  return "\n".join(rows)


def test_readme_table_matches_these_cases():
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = readme.split("<!-- bad-inputs:start -->")[1].split("<!-- bad-inputs:end -->")[0].strip()
  assert section == markdown_table(), "regenerate the README table:\n" + markdown_table()
