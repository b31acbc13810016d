"""KL penalties for policy optimisation, checked exactly by enumerating every response.

Policies are tabular and autoregressive over V = 3 tokens and T = 3 positions (27 responses).
The expected value (and gradient) of an estimator is Σ_y S(y) · estimator(y) with S the sampler's
sequence probability held constant; the references are the KLs written out by enumeration here
(sequence KL from whole-response probabilities, token-level KL from each prefix's full
conditional distributions), independently of klax.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klax

V, T = 3, 3
SEQS = np.array(list(itertools.product(range(V), repeat=T)))  # [27, T]
# Index of each response's prefix y_<t among the V^t prefixes of position t.
PREFIX = np.stack([SEQS[:, :t] @ (V ** np.arange(t)[::-1]) for t in range(T)], axis=1)


def _tables(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(scale * rng.normal(size=(V**t, V)), jnp.float32) for t in range(T)]


def _token_log_probs(tables):
  """[27, T] log-probabilities of each response's tokens under a tabular policy."""
  columns = [jax.nn.log_softmax(tables[t])[PREFIX[:, t], SEQS[:, t]] for t in range(T)]
  return jnp.stack(columns, axis=1)


def _sequence_kl(log_a, log_b, mask):
  """Σ_y a(y) log(a(y)/b(y)) over the unmasked tokens' joint distribution."""
  la = jnp.sum(jnp.where(mask, log_a, 0.0), axis=1)
  lb = jnp.sum(jnp.where(mask, log_b, 0.0), axis=1)
  keep = int(mask.sum())  # The mask keeps the first `keep` positions: count each prefix once.
  weight = 1.0 / V ** (T - keep)
  return jnp.sum(weight * jnp.exp(la) * (la - lb))


def _token_kl(a_tables, b_tables, sampler_tables, mask):
  """Σ_t Σ_{y<t} S(y<t) KL(a(·|y<t) ‖ b(·|y<t)), S held constant, over the unmasked positions."""
  total = 0.0
  log_s = jax.lax.stop_gradient(_token_log_probs(sampler_tables))
  for t in range(T):
    if not mask[t]:
      continue
    la, lb = jax.nn.log_softmax(a_tables[t]), jax.nn.log_softmax(b_tables[t])
    per_prefix = jnp.sum(jnp.exp(la) * (la - lb), axis=1)  # [V^t]
    prefix_prob = jnp.exp(jnp.sum(log_s[:, :t], axis=1)) / V ** (T - t)  # each prefix V^{T-t}×
    total = total + jnp.sum(prefix_prob * per_prefix[PREFIX[:, t]])
  return total


def _expect(sampler_log_probs, per_token):
  """E_S[Σ_t per_token] by enumeration, S held constant."""
  weight = jnp.exp(jnp.sum(jax.lax.stop_gradient(sampler_log_probs), axis=1))
  return jnp.sum(weight * jnp.sum(per_token, axis=1))


THETA, REF, MU = _tables(0), _tables(1), _tables(2, scale=0.7)
MASKS = (np.array([True, True, True]), np.array([True, True, False]))
COMBOS = [
  (direction, level, estimator, off, m)
  for direction in ("reverse", "forward")
  for level in ("sequence", "token")
  for estimator in ("k1", "k3")
  for off in (False, True)
  for m in range(len(MASKS))
  if m == 0 or (estimator == "k3" and off)  # The padding mask: once per objective.
]


@jax.jit
def _kl_penalty_cases(theta):
  """(E value, E surrogate, ∇ E surrogate, J, ∇J) for every combination, one program."""
  log_ref, log_mu = _token_log_probs(REF), _token_log_probs(MU)
  out, objectives = [], {}
  for direction, level, estimator, off, m in COMBOS:

    def estimate(theta, direction=direction, level=level, estimator=estimator, off=off, m=m):
      log_pi = _token_log_probs(theta)
      # NaN at masked positions must not be looked at.
      log_pi_in = jnp.where(MASKS[m], log_pi, jnp.nan)
      pen = klax.kl_penalty(
        log_pi_in,
        log_ref,
        MASKS[m],
        behaviour_log_probs=log_mu if off else None,
        direction=direction,
        level=level,
        estimator=estimator,
      )
      sampler = log_mu if off else log_pi
      return _expect(sampler, pen.surrogate), _expect(sampler, pen.value)

    def objective(theta, direction=direction, level=level, off=off, m=m):
      log_pi = _token_log_probs(theta)
      a, b = (theta, REF) if direction == "reverse" else (REF, theta)
      if level == "sequence":
        la, lb = (log_pi, log_ref) if direction == "reverse" else (log_ref, log_pi)
        return _sequence_kl(la, lb, MASKS[m])
      return _token_kl(a, b, MU if off else theta, MASKS[m])

    (surrogate, value), grad = jax.value_and_grad(estimate, has_aux=True)(theta)
    key = (direction, level, off and level == "token", m)  # What the objective depends on.
    if key not in objectives:
      objectives[key] = jax.value_and_grad(objective)(theta)
    out.append((value, surrogate, grad, *objectives[key]))
  return out


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_kl_penalty_value_and_gradient_are_exact_in_expectation_for_every_combination():
  for combo, (value, surrogate, grad, j, grad_j) in zip(
    COMBOS, _kl_penalty_cases(THETA), strict=True
  ):
    assert float(j) > 0.05, combo  # The policies differ: the check is not vacuous.
    np.testing.assert_allclose(value, j, rtol=2e-5, err_msg=str(combo))
    np.testing.assert_allclose(surrogate, value, rtol=1e-6, err_msg=str(combo))
    np.testing.assert_allclose(_flat(grad), _flat(grad_j), rtol=1e-4, atol=2e-6, err_msg=str(combo))


def test_token_level_is_not_the_sequence_gradient():
  results = dict(zip(COMBOS, _kl_penalty_cases(THETA), strict=True))
  token = _flat(results[("reverse", "token", "k1", False, 0)][2])
  sequence = _flat(results[("reverse", "sequence", "k1", False, 0)][2])
  assert np.linalg.norm(token - sequence) > 0.05 * np.linalg.norm(sequence)


@jax.jit
def _estimator_loss_gradients(theta):
  """∇ E[Σ_t loss_t] of kl_estimator_loss, and the reference gradients it may or may not equal."""
  log_ref, log_mu = _token_log_probs(REF), _token_log_probs(MU)
  mask = MASKS[0]
  out = {}
  for estimator in ("k1", "k2", "k3"):
    for off in (False, True):

      def expected(theta, estimator=estimator, off=off):
        log_pi = _token_log_probs(theta)
        loss = klax.kl_estimator_loss(
          log_pi, log_ref, mask, estimator=estimator, behaviour_log_probs=log_mu if off else None
        )
        return _expect(log_mu if off else log_pi, loss)

      out[f"{estimator} {off}"] = jax.grad(expected)(theta)
  out["reverse False"] = jax.grad(lambda th: _token_kl(th, REF, th, mask))(theta)
  out["reverse True"] = jax.grad(lambda th: _token_kl(th, REF, MU, mask))(theta)
  out["forward False"] = jax.grad(lambda th: _token_kl(REF, th, th, mask))(theta)

  # Reward placement: REINFORCE with returns Σ_{u≥t} value_u, on-policy.
  def reinforce(theta, estimator):
    log_pi = _token_log_probs(theta)
    value = klax.kl_penalty(log_pi, log_ref, estimator=estimator).value
    returns = jnp.cumsum(value[:, ::-1], axis=1)[:, ::-1]
    return _expect(log_pi, log_pi * returns)

  out["reward k1"] = jax.grad(reinforce)(theta, "k1")
  out["reward k3"] = jax.grad(reinforce)(theta, "k3")
  out["sequence"] = jax.grad(lambda th: _sequence_kl(_token_log_probs(th), log_ref, mask))(theta)
  return out


def test_kl_estimator_loss_gradients_match_the_documented_table():
  g = {k: _flat(v) for k, v in _estimator_loss_gradients(THETA).items()}

  def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)

  def far(a, b):
    assert np.linalg.norm(a - b) > 0.05 * np.linalg.norm(b)

  close(g["k2 False"], g["reverse False"])  # k2 on-policy: unbiased, token level.
  close(g["k1 True"], g["reverse True"])  # w·k1 off-policy: unbiased.
  close(g["k3 True"], g["reverse True"])  # w·k3 off-policy: unbiased.
  close(g["k3 False"], g["forward False"])  # k3 on-policy: the other direction's gradient.
  np.testing.assert_allclose(g["k1 False"], 0.0, atol=2e-6)  # k1 on-policy: no gradient.
  far(g["k3 False"], g["reverse False"])  # ... so k3 as a loss is biased for KL(π ‖ π_ref),
  far(g["k1 False"], g["reverse False"])
  far(g["k2 True"], g["reverse True"])  # and w·k2 off-policy is biased.
  close(g["reward k1"], g["sequence"])  # k1 in the reward: the sequence-level gradient.
  far(g["reward k3"], g["sequence"])  # k3 in the reward: biased.


def test_kl_penalty_under_jit_vmap_and_grad_and_no_retrace():
  log_pi, log_ref = _token_log_probs(THETA), _token_log_probs(REF)
  mask = jnp.asarray(np.random.default_rng(3).random(log_pi.shape) < 0.8)
  full = klax.kl_penalty(log_pi, log_ref, mask, level="sequence")
  rows = jax.vmap(lambda a, b, m: klax.kl_penalty(a, b, m, level="sequence"))(log_pi, log_ref, mask)
  np.testing.assert_allclose(rows.value, full.value, rtol=1e-6)
  before = klax.kl_penalty._cache_size()
  klax.kl_penalty(log_pi + 0.1, log_ref, mask, level="sequence")
  assert klax.kl_penalty._cache_size() == before
  grad = jax.grad(lambda x: jnp.sum(klax.kl_penalty(x, log_ref, mask).surrogate))(log_pi)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~np.asarray(mask)] == 0.0)
  loss = jax.vmap(lambda a, b: klax.kl_estimator_loss(a, b, estimator="k3"))(log_pi, log_ref)
  np.testing.assert_allclose(loss, klax.kl_estimator_loss(log_pi, log_ref, estimator="k3"))
  assert np.all(
    np.isfinite(
      jax.grad(
        lambda x: jnp.sum(
          klax.kl_estimator_loss(x, log_ref, mask, estimator="k2", behaviour_log_probs=log_ref)
        )
      )(log_pi)
    )
  )


def test_edge_values_nan_and_empty_rows():
  a = jnp.array([[-1.0, jnp.nan, -0.5], [-1.0, -1.0, -1.0]])
  b = jnp.full_like(a, -1.2)
  mask = jnp.array([[True, True, True], [False, False, False]])
  for level in ("sequence", "token"):
    pen = klax.kl_penalty(a, b, mask, level=level)
    assert np.isnan(pen.value[0, 1]) and pen.value[0, 0] == pytest.approx(0.2)
    assert np.isnan(pen.value[0, 2]) == (level == "sequence")  # NaN flows on through w.
    np.testing.assert_array_equal(pen.value[1], 0.0)  # An empty response: 0, gradient 0.
    grad = jax.grad(lambda x, level=level: jnp.sum(klax.kl_penalty(x, b, mask, level=level)[1][1]))(
      a
    )
    np.testing.assert_array_equal(grad[1], 0.0)
  loss = klax.kl_estimator_loss(a, b, mask, estimator="k3")
  assert np.isnan(loss[0, 1]) and np.all(loss[1] == 0.0)


def test_bad_options_and_shapes_raise_at_trace_time_naming_the_argument():
  x = jnp.zeros((2, 3))
  for kwargs, word in (
    ({"direction": "backward"}, "`direction`"),
    ({"level": "tokens"}, "`level`"),
    ({"estimator": "k2"}, "`estimator`"),
  ):
    with pytest.raises(ValueError, match=word):
      jax.jit(lambda a, kwargs=kwargs: klax.kl_penalty(a, a, **kwargs))(x)
  with pytest.raises(ValueError, match="ref_log_probs"):
    klax.kl_penalty(x, jnp.zeros((2, 4)))
  with pytest.raises(TypeError, match="`mask`"):
    klax.kl_penalty(x, x, jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="`estimator`"):
    klax.kl_estimator_loss(x, x, estimator="k4")
  with pytest.raises(TypeError, match="behaviour_log_probs"):
    klax.kl_penalty(x, x, behaviour_log_probs=jnp.zeros((2, 3), int))
