"""Batched fitting throughput on seed 001's problem: klax against what users would write instead.

Reverse KL (Gaussian q to P = ½N(−3, 1.2²) + ½N(3, 1.2²), 64 reparameterised samples, Adam,
2,000 steps) for B random starts, by
- `klax.fit_batch`, and `klax.fit_batch(..., common_random_numbers=True)` (one draw of base noise
  per step for the whole batch; each member still an unbiased fit), with the optima both reach
  when run to convergence;
- a hand-written `jax.jit(jax.vmap(lax.scan(...)))` loop (the reference for klax's design);
- TFP-on-JAX `tfp.vi.fit_surrogate_posterior_stateless` (jitted, vmapped over starts);
- NumPyro SVI (`Trace_ELBO`, same guide and steps), one start at a time as its users do
  (optional: skipped with a message when numpyro is absent).
Forward KL (10,000 data points, Adam) by klax and by hand. The seed's own deterministic method,
L-BFGS on the grid, by scipy (one start at a time, in a Python loop, as the seed does) and by klax
(`fit_batch` with `optax.lbfgs` and a stopping rule, all starts in one call; each start stops
by itself), with the optima both reach from the same starts. Compile time is reported apart from run time:
the seconds JAX reports spending on tracing, lowering and XLA-compiling the first call's programs,
and beside them how much longer the first call took than the second. Prints a table and writes
JSON.

Run: python experiments/benchmarks/fit_throughput.py [--quick] [--out DIR] [--cases reverse,forward,grid]
     [--cpu-devices N]  (N JAX CPU devices, e.g. one per core: fit_batch shards over them)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import klax
from experiments import _io

NUM_SAMPLES = 64
LEARNING_RATE = 1e-2


def log_p(x):
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2)) - jnp.log(2.0)


# JAX's own account of a compilation: tracing to a jaxpr, lowering to MLIR, XLA's compile.
COMPILE_EVENTS = frozenset(
  f"/jax/core/compile/{phase}"
  for phase in ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")
)


def _timed(fn, min_total_s: float = 1.0, max_repeats: int = 10):
  """(compile seconds, run seconds, first call minus the run).

  Compile seconds are the durations JAX reports (`jax.monitoring`) for tracing, lowering and
  compiling every program the first call builds: the cost of compiling itself, free of the
  run-to-run noise of a difference of two timed calls. A JAX that reports none of those events
  gets the first call minus the run instead. The run is the fastest of the calls after the first,
  repeated until they took `min_total_s` together (at most `max_repeats`, at least one): a
  batch of 20 L-BFGS fits runs in milliseconds, where one call's time is mostly noise.
  """
  compile_seconds = []

  def listener(event, seconds, **_):
    if event in COMPILE_EVENTS:
      compile_seconds.append(seconds)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  runs = []
  while not runs or (sum(runs) < min_total_s and len(runs) < max_repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - start)
  run = min(runs)
  first_call_extra = max(first - run, 0.0)
  return (sum(compile_seconds) if compile_seconds else first_call_extra), run, first_call_extra


def starts(size):
  return {"loc": jnp.linspace(-6.0, 6.0, size), "log_scale": jnp.zeros(size)}


def klax_reverse(size, steps):
  loss = klax.reverse_kl_loss(klax.families.normal(), log_p, NUM_SAMPLES)
  optimizer = optax.adam(LEARNING_RATE)
  params, key = starts(size), jax.random.key(0)  # Made here, as the hand-written loop's keys are.
  return lambda: klax.fit_batch(loss, params, optimizer, key, steps, trace_every=steps).params


def klax_reverse_common(size, steps):
  """The same fits with `common_random_numbers=True`: one draw of base noise per step."""
  loss = klax.reverse_kl_loss(klax.families.normal(), log_p, NUM_SAMPLES)
  optimizer = optax.adam(LEARNING_RATE)
  params, key = starts(size), jax.random.key(0)
  return lambda: (
    klax.fit_batch(
      loss,
      params,
      optimizer,
      key,
      steps,
      trace_every=steps,
      common_random_numbers=True,
    ).params
  )


def converged_reverse(size, steps, common_random_numbers):
  """End points of reverse-KL fits run to convergence (Adam with a cosine-decayed step size)."""
  loss = klax.reverse_kl_loss(klax.families.normal(), log_p, NUM_SAMPLES)
  optimizer = optax.adam(optax.cosine_decay_schedule(0.05, steps))
  key = jax.random.key(1)
  return klax.fit_batch(
    loss,
    starts(size),
    optimizer,
    key,
    steps,
    trace_every=steps,
    common_random_numbers=common_random_numbers,
  ).params


def optima(params) -> list[list[float]]:
  """The distinct end points (μ, σ) of a batch of reverse-KL fits, by klax.basin_report."""
  size = params["loc"].shape[0]
  result = klax.FitResult(params, jnp.zeros((size, 1)), jnp.full(size, -1, jnp.int32))

  def features(p):
    return jnp.stack([p["loc"], jnp.exp(p["log_scale"])])

  basins = klax.basin_report(result, tolerance=0.3, features=features)
  return sorted(
    [round(float(b.params["loc"]), 3), round(float(jnp.exp(b.params["log_scale"])), 3)]
    for b in basins
  )


def hand_reverse(size, steps):
  optimizer = optax.adam(LEARNING_RATE)

  def one(params, key):
    def loss(p, k):
      eps = jax.random.normal(k, (NUM_SAMPLES,))
      x = p["loc"] + jnp.exp(p["log_scale"]) * eps
      log_q = -0.5 * eps**2 - p["log_scale"] - 0.5 * math.log(2 * math.pi)
      return jnp.mean(log_q - log_p(x))

    def step(carry, i):
      p, state = carry
      grads = jax.grad(loss)(p, jax.random.fold_in(key, i))
      updates, state = optimizer.update(grads, state, p)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))[0][0]

  run = jax.jit(jax.vmap(one))
  params, keys = starts(size), jax.random.split(jax.random.key(0), size)
  return lambda: run(params, keys)


def tfp_reverse(size, steps):
  from tensorflow_probability.substrates import jax as tfp

  def build(params):
    return tfp.distributions.Normal(params["loc"], jnp.exp(params["log_scale"]))

  def one(params, key):
    final, _ = tfp.vi.fit_surrogate_posterior_stateless(
      log_p, build, params, optax.adam(LEARNING_RATE), steps, sample_size=NUM_SAMPLES, seed=key
    )
    return final

  run = jax.jit(jax.vmap(one))
  params, keys = starts(size), jax.random.split(jax.random.key(0), size)
  return lambda: run(params, keys)


def numpyro_svi(init_loc):
  """NumPyro SVI of seed 001's target with a normal guide (`Trace_ELBO`, same samples, Adam)."""
  import numpyro
  import numpyro.distributions as dist
  from numpyro.infer import SVI
  from numpyro.infer import Trace_ELBO

  def model():
    numpyro.factor(
      "target", log_p(numpyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), ())))
    )

  def guide():
    mu = numpyro.param("loc", init_loc)
    log_scale = numpyro.param("log_scale", 0.0)
    numpyro.sample("x", dist.Normal(mu, jnp.exp(log_scale)))

  elbo = Trace_ELBO(num_particles=NUM_SAMPLES, vectorize_particles=True)
  return SVI(model, guide, optax.adam(LEARNING_RATE), elbo)


def numpyro_reverse(size, steps):
  """NumPyro as its users usually run it: `svi.run` per start (a new guide, so a new compile)."""
  import numpyro  # noqa: F401  (skip the case with a message when NumPyro is absent)

  def fit_one(loc):
    return numpyro_svi(loc).run(jax.random.key(0), steps, progress_bar=False).params

  locs = np.linspace(-6.0, 6.0, size)
  return lambda: [fit_one(float(loc)) for loc in locs]


def numpyro_reverse_vmapped(size, steps):
  """NumPyro SVI (`Trace_ELBO`, same guide), its steps in a `scan`, `jit(vmap)`ped over starts."""
  import numpyro  # noqa: F401

  svi = numpyro_svi(0.0)

  def fit_one(loc, key):
    state = svi.init(key, init_params={"loc": loc, "log_scale": jnp.zeros_like(loc)})
    state = jax.lax.scan(lambda s, _: (svi.update(s)[0], None), state, None, length=steps)[0]
    return svi.get_params(state)

  run = jax.jit(jax.vmap(fit_one))
  locs, keys = starts(size)["loc"], jax.random.split(jax.random.key(0), size)
  return lambda: run(locs, keys)


GRID = np.arange(-10, 10, 0.01)


def scipy_grid(size, steps):
  del steps  # scipy stops by its own rule (ftol, gtol).
  from scipy.optimize import minimize
  from scipy.stats import entropy
  from scipy.stats import norm as scipy_norm

  p = scipy_norm.pdf(GRID, -3, 1.2) + scipy_norm.pdf(GRID, 3, 1.2)

  def objective(theta):
    return entropy(scipy_norm.pdf(GRID, theta[0], theta[1]), p)

  inits = np.c_[np.linspace(-4.0, 4.0, size), np.full(size, 1.2)]
  return lambda: np.array([minimize(objective, x0, method="L-BFGS-B").x for x0 in inits])


GRID_GRADIENT_TOLERANCE = (
  1e-4  # Stop each member at max |∇| <= 1e-4 (float32; scipy's gtol is 1e-5).
)


def grid_loss():
  """Seed 001's objective KL(q̂ ‖ p̂) on the grid, q = N(loc, exp(log_scale)²); deterministic."""
  grid = jnp.asarray(GRID, jnp.float32)
  log_p_values = log_p(grid)  # Evaluated once, as the seed evaluates p once.

  def loss(params, key):
    del key
    log_q = norm.logpdf(grid, params["loc"], jnp.exp(params["log_scale"]))
    return klax.kl_divergence_grid(log_q, log_p_values, grid)

  return loss


def klax_grid(size, steps):
  """klax's L-BFGS on the grid: every start stops by its own rule, none waits for another."""
  loss = grid_loss()
  params = {"loc": jnp.linspace(-4.0, 4.0, size), "log_scale": jnp.full(size, math.log(1.2))}
  optimizer = optax.lbfgs()  # Built once: a new optimizer object would compile anew.
  key = jax.random.key(0)

  def run():
    result = klax.fit_batch(
      loss,
      params,
      optimizer,
      key,
      steps,
      trace_every=steps,
      gradient_tolerance=GRID_GRADIENT_TOLERANCE,
    )
    return jnp.stack([result.params["loc"], jnp.exp(result.params["log_scale"])], axis=1)

  return run


def klax_grid_loop(size, steps):
  """One `klax.fit` per start, in a Python loop, as scipy is run (and as a user fits one model)."""
  loss = grid_loss()
  inits = [
    {"loc": jnp.float32(loc), "log_scale": jnp.float32(math.log(1.2))}
    for loc in np.linspace(-4.0, 4.0, size)
  ]
  optimizer, key = optax.lbfgs(), jax.random.key(0)

  def fit(start):
    rule = {"gradient_tolerance": GRID_GRADIENT_TOLERANCE}
    return klax.fit(loss, start, optimizer, key, steps, **rule).params

  return lambda: [fit(start) for start in inits]


def grid_optima_agree(size) -> dict:
  """Where klax's and scipy's L-BFGS land from the same starts (μ, σ), and how far apart."""
  ours, theirs = np.asarray(klax_grid(size, 200)()), scipy_grid(size, 200)()
  distance = np.abs(ours - theirs).max(axis=1)
  return {
    "batch": size,
    "same_optimum": int(np.sum(distance < 2e-3)),
    "max_distance_where_same": float(distance[distance < 2e-3].max(initial=0.0)),
    "klax": np.unique(ours.round(3), axis=0).tolist(),
    "scipy": np.unique(theirs.round(3), axis=0).tolist(),
  }


def forward_data():
  key_mode, key_noise = jax.random.split(jax.random.key(1))
  modes = jnp.where(jax.random.bernoulli(key_mode, 0.5, (10_000,)), 3.0, -3.0)
  return modes + 1.2 * jax.random.normal(key_noise, (10_000,))


def klax_forward(size, steps):
  loss = klax.forward_kl_loss(klax.families.normal(), forward_data())
  params, optimizer, key = starts(size), optax.adam(LEARNING_RATE), jax.random.key(0)
  return lambda: klax.fit_batch(loss, params, optimizer, key, steps, trace_every=steps).params


def hand_forward(size, steps):
  data, optimizer = forward_data(), optax.adam(LEARNING_RATE)

  def one(params):
    def loss(p):
      return -jnp.mean(norm.logpdf(data, p["loc"], jnp.exp(p["log_scale"])))

    def step(carry, _):
      p, state = carry
      updates, state = optimizer.update(jax.grad(loss)(p), state, p)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)[0][0]

  run = jax.jit(jax.vmap(one))
  params = starts(size)
  return lambda: run(params)


def measure(name, make, size, steps, min_total_s=1.0) -> dict:
  try:
    compile_s, run_s, first_call_extra_s = _timed(make(size, steps), min_total_s)
  except ImportError as error:
    print(f"  {name}: skipped ({error.name} is not installed)")
    return {"method": name, "batch": size, "skipped": f"{error.name} not installed"}
  row = {
    "method": name,
    "batch": size,
    "steps": steps,
    "compile_s": compile_s,
    "first_call_extra_s": first_call_extra_s,
    "run_s": run_s,
    "fits_per_s": size / run_s,
  }
  print(
    f"  {name:<36} B={size:<6} compile {compile_s:5.2f} s (first call +{first_call_extra_s:5.2f} s)"
    f"  run {run_s:8.3f} s  {row['fits_per_s']:10.1f} fits/s",
    flush=True,
  )
  return row


def speedups(rows) -> list[str]:
  """klax's fits per second over each alternative's, at equal batch size (same run)."""
  rate = {(r["method"], r["batch"]): r["fits_per_s"] for r in rows if "fits_per_s" in r}
  pairs = [
    ("klax.fit_batch reverse", "hand-written reverse"),
    ("klax.fit_batch reverse, common noise", "hand-written reverse"),
    ("klax.fit_batch reverse", "TFP fit_surrogate reverse"),
    ("klax.fit_batch reverse, common noise", "TFP fit_surrogate reverse"),
    ("klax.fit_batch reverse", "NumPyro SVI reverse (jit(vmap))"),
    ("klax.fit_batch reverse, common noise", "NumPyro SVI reverse (jit(vmap))"),
    ("klax.fit_batch forward", "hand-written forward"),
  ]
  lines = []
  for ours, theirs in pairs:
    for (method, batch), value in sorted(rate.items()):
      if method == ours and (theirs, batch) in rate:
        lines.append(f"{ours} / {theirs} at B={batch}: {value / rate[(theirs, batch)]:.2f}× fits/s")
  for (method, batch), value in sorted(rate.items()):
    if method in ("klax.fit_batch lbfgs grid", "klax.fit lbfgs grid (loop)"):
      for (other, other_batch), baseline in rate.items():
        if other == "scipy L-BFGS-B grid (loop)":
          lines.append(
            f"{method} (B={batch}) / scipy loop (B={other_batch}): {value / baseline:.1f}× fits/s"
          )
    if method == "klax.fit_batch reverse" and ("NumPyro SVI reverse (loop)", 10) in rate:
      lines.append(
        f"klax reverse (B={batch}) / NumPyro loop: {value / rate[('NumPyro SVI reverse (loop)', 10)]:.1f}× fits/s"
      )
  return lines


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
  parser.add_argument("--out", default="results/benchmarks")
  parser.add_argument(
    "--cases", default="reverse,forward,grid", help="comma-separated subset of reverse,forward,grid"
  )
  parser.add_argument(
    "--cpu-devices",
    type=int,
    default=None,
    help="on CPU, split the host into this many JAX devices (one per core) before anything runs, "
    "so that fit_batch shards over them; default: JAX's own (one)",
  )
  args = parser.parse_args(argv)
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # Before the backend starts.
  cases = set(args.cases.split(","))
  # --quick checks the harness: one small batch, 20 steps, one timed call after the first.
  steps = 20 if args.quick else 2_000
  sizes = (2,) if args.quick else (1, 100, 1_000, 10_000)
  rows, extra = [], {}
  if "reverse" in cases:
    rows += reverse_rows(sizes, steps, args.quick)
    # Shared noise changes which start lands where, not where the optima are: fit to
    # convergence (decaying step size) with and without it and compare the end points.
    size = min(sizes[-1], 1_000)
    for common in (False, True):
      name = "optima_common_noise" if common else "optima_independent"
      extra[name] = optima(converged_reverse(size, steps, common))
      print(
        f"optima (μ, σ), B={size}, {'common' if common else 'independent'} noise: {extra[name]}"
      )
  if "forward" in cases:
    rows += forward_rows(sizes, steps, args.quick)
  if "grid" in cases:
    rows += grid_rows(args.quick)
    extra["grid_optima"] = grid_optima_agree(2 if args.quick else 20)
    print(f"grid optima, klax against scipy from the same starts: {extra['grid_optima']}")
  ratios = speedups(rows)
  for line in ratios:
    print(line)
  out = Path(args.out)
  name = (
    "fit_throughput.json" if not args.cpu_devices else f"fit_throughput_{args.cpu_devices}cpu.json"
  )
  extra["devices"] = [str(d) for d in jax.devices()]
  _io.write_json_atomic(out / name, {"rows": rows, "ratios": ratios, **extra, **_io.provenance()})
  print(f"wrote {out / name}")
  return {"rows": rows, **extra}


def reverse_rows(sizes, steps, quick) -> list[dict]:
  rows, repeat_s = [], 0.0 if quick else 1.0
  print("reverse KL (Adam, 64 samples):")
  for size in sizes:
    rows.append(measure("klax.fit_batch reverse", klax_reverse, size, steps, repeat_s))
    rows.append(
      measure("klax.fit_batch reverse, common noise", klax_reverse_common, size, steps, repeat_s)
    )
    rows.append(measure("hand-written reverse", hand_reverse, size, steps, repeat_s))
    rows.append(measure("TFP fit_surrogate reverse", tfp_reverse, size, steps, repeat_s))
  numpyro_size = 2 if quick else 10
  rows.append(measure("NumPyro SVI reverse (loop)", numpyro_reverse, numpyro_size, steps, repeat_s))
  for size in sizes[-2:]:
    rows.append(
      measure("NumPyro SVI reverse (jit(vmap))", numpyro_reverse_vmapped, size, steps, repeat_s)
    )
  return rows


def forward_rows(sizes, steps, quick) -> list[dict]:
  rows, repeat_s = [], 0.0 if quick else 1.0
  print("forward KL (Adam, 10,000 points):")
  # B = 10,000 would be 2e11 log-density evaluations per method: hours on 2 cores.
  for size in sizes if quick else (1, 100, 1_000):
    rows.append(measure("klax.fit_batch forward", klax_forward, size, steps, repeat_s))
    rows.append(measure("hand-written forward", hand_forward, size, steps, repeat_s))
  return rows


def grid_rows(quick) -> list[dict]:
  rows, repeat_s = [], 0.0 if quick else 1.0
  print(f"seed 001's grid, L-BFGS (klax: gradient_tolerance={GRID_GRADIENT_TOLERANCE}):")
  for size in (2,) if quick else (1, 20, 1_000):
    rows.append(measure("klax.fit_batch lbfgs grid", klax_grid, size, 200, repeat_s))
  loop_size = 2 if quick else 20
  rows.append(measure("klax.fit lbfgs grid (loop)", klax_grid_loop, loop_size, 200, repeat_s))
  rows.append(measure("scipy L-BFGS-B grid (loop)", scipy_grid, loop_size, 200, repeat_s))
  return rows


if __name__ == "__main__":
  main()
