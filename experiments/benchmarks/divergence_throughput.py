"""Divergence throughput: klax's closed forms and estimators against what users would write instead.

1. Full-covariance multivariate normals (Cholesky-factor parametrisation), d = 2, 16, 64, over a
   batch of pairs: `klax.kl_divergence` against distrax's and TFP-on-JAX's own KL and a
   hand-written `jnp` formula (`jax.scipy.linalg.solve_triangular`). Each case runs in its own
   process with a timeout: jaxlib 0.10's CPU LAPACK kernels for large batched triangular solves
   were seen to deadlock, and a hung case is recorded as such instead of stopping the run.
2. Per-token KL of two language models, `klax.kl_divergence_logits` over (batch, 32,000) logits,
   against the hand-written `softmax · (log_softmax − log_softmax)` formula, in GB/s of logits read
   and as a fraction of this machine's measured memory bandwidth (a jitted sum over 1 GiB); beside
   them, the same batch's exponential ceiling: the time XLA takes for one exponential of every
   logit of p and of q (summed per row), the least work any formula that gives the exact KL does.
3. `klax.kl_divergence_knn` for n = 1,000 … 100,000 points in 2-D, against scipy's cKDTree.

Prints a table and writes JSON (machine, device, versions). Run:
python experiments/benchmarks/divergence_throughput.py [--quick] [--out DIR] [--cases mvn,logits,knn]
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue as queue_module
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments import _io

VOCABULARY = 32_000


def _best_time(fn, *args, repeats: int = 5) -> float:
  """Seconds per call after one warm-up (compile) call: the best of `repeats`."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _mvn_inputs(batch: int, d: int):
  keys = jax.random.split(jax.random.key(0), 4)
  means = [jax.random.normal(k, (batch, d)) for k in keys[:2]]
  trils = []
  for k in keys[2:]:
    raw = jnp.tril(jax.random.normal(k, (batch, d, d)) / np.sqrt(d), -1)
    trils.append(raw + jnp.eye(d) * (1.0 + jax.random.uniform(k, (batch, 1, d))))
  return means[0], trils[0], means[1], trils[1]


def _mvn_method(name: str):
  import distrax
  from tensorflow_probability.substrates import jax as tfp

  import klax

  tfd = tfp.distributions

  def hand(
    mp, lp, mq, lq
  ):  # ½[‖L_q⁻¹L_p‖² + ‖L_q⁻¹(m_q − m_p)‖² − d + 2Σ log(diag L_q / diag L_p)]
    solve = jax.scipy.linalg.solve_triangular
    m = solve(lq, lp, lower=True)
    z = solve(lq, (mq - mp)[..., None], lower=True)
    log_det = jnp.sum(
      jnp.log(jnp.diagonal(lq, axis1=-2, axis2=-1) / jnp.diagonal(lp, axis1=-2, axis2=-1)), -1
    )
    return 0.5 * (jnp.sum(m**2, (-2, -1)) + jnp.sum(z**2, (-2, -1)) - mp.shape[-1] + 2 * log_det)

  methods = {
    "klax.kl_divergence": lambda mp, lp, mq, lq: klax.kl_divergence(
      distrax.MultivariateNormalTri(mp, lp), distrax.MultivariateNormalTri(mq, lq)
    ),
    "distrax": lambda mp, lp, mq, lq: distrax.MultivariateNormalTri(mp, lp).kl_divergence(
      distrax.MultivariateNormalTri(mq, lq)
    ),
    "TFP": lambda mp, lp, mq, lq: tfd.kl_divergence(
      tfd.MultivariateNormalTriL(mp, lp), tfd.MultivariateNormalTriL(mq, lq)
    ),
    "hand-written jnp": hand,
  }
  return jax.jit(methods[name])


MVN_METHODS = ("klax.kl_divergence", "distrax", "TFP", "hand-written jnp")


def _mvn_cases(jobs, queue) -> None:
  """(method, batch, d) measurements run one after another in a child process; puts (index,
  seconds, first values) after each."""
  for index, (name, batch, d) in enumerate(jobs):
    inputs = _mvn_inputs(batch, d)
    fn = _mvn_method(name)
    seconds = _best_time(fn, *inputs)
    queue.put((index, seconds, np.asarray(fn(*inputs))[:4].tolist()))


def mvn_rows(cases, timeout_s: float, one_process: bool = False) -> list[dict]:
  """One row per (method, d): each measured in its own child process, or (`one_process`, for
  --quick) all in one child, with a timeout of `timeout_s` per measurement."""
  jobs = [(name, batch, d) for d, batch in cases for name in MVN_METHODS]
  groups = [jobs] if one_process else [[job] for job in jobs]
  context = multiprocessing.get_context("spawn")
  print("multivariate normal KL (batch of pairs, float32):")
  rows = []
  for group in groups:
    queue = context.Queue()
    process = context.Process(target=_mvn_cases, args=(group, queue))
    process.start()
    results, deadline = {}, time.monotonic() + timeout_s
    # A result per measurement, each within `timeout_s`; otherwise the child hung or died.
    while len(results) < len(group) and time.monotonic() < deadline:
      try:
        index, seconds, first = queue.get(timeout=0.2)
      except queue_module.Empty:
        if not process.is_alive() and queue.empty():
          break
        continue
      results[index], deadline = (seconds, first), time.monotonic() + timeout_s
    process.join(max(deadline - time.monotonic(), 0.0))
    hung = process.is_alive()
    if hung:
      process.kill()
      process.join()
    for index, (name, batch, d) in enumerate(group):
      row = {"case": "mvn", "method": name, "d": d, "batch": batch}
      if index in results:
        seconds, first = results[index]
        row |= {"seconds": seconds, "pairs_per_s": batch / seconds, "first_values": first}
        print(
          f"  d={d:<3} {name:<20} B={batch:<7} {seconds * 1e3:9.2f} ms  {batch / seconds:12.0f} pairs/s"
        )
      elif hung:
        row["hung"] = f"no result in {timeout_s:.0f} s (jaxlib CPU LAPACK deadlock)"
        print(f"  d={d:<3} {name:<20} hung (killed after {timeout_s:.0f} s)")
      else:
        row["failed"] = f"exit code {process.exitcode}"
        print(f"  d={d:<3} {name:<20} failed (exit code {process.exitcode})")
      rows.append(row)
  return rows


def memory_bandwidth(log2_size: int = 28) -> float:
  """GB/s of a jitted sum over a float32 array of 2**log2_size elements (1 GiB by default; a
  read-bandwidth estimate)."""
  array = jnp.ones((1 << log2_size,), jnp.float32)
  seconds = _best_time(jax.jit(jnp.sum), array)
  return array.nbytes / seconds / 1e9


def _two_exponentials(p_logits, q_logits):
  """Σ e^a + Σ e^b per row: each logit read once and exponentiated once, nothing else."""
  return jnp.sum(jnp.exp(p_logits), axis=-1) + jnp.sum(jnp.exp(q_logits), axis=-1)


def exponential_ceiling_row(p_logits, q_logits, bandwidth: float) -> dict:
  """How fast this machine exponentiates a batch of logits: a ceiling for any exact logits KL.

  KL(softmax a ‖ softmax b) needs Σ e^(a − max a) and Σ e^(b − max b), so every formula that
  computes it exactly takes at least one exponential per logit of p and one per logit of q.
  Where this row's GB/s is below the memory bandwidth, the exponentials, not memory, set the
  limit (and no formula of the KL can reach a larger fraction of the bandwidth than this).
  """
  seconds = _best_time(jax.jit(_two_exponentials), p_logits, q_logits)
  rate = (p_logits.nbytes + q_logits.nbytes) / seconds / 1e9
  batch = p_logits.shape[0]
  print(
    f"  B={batch:<6} two exponentials per outcome (ceiling) {seconds * 1e3:9.2f} ms  "
    f"{rate:7.2f} GB/s  {rate / bandwidth:6.1%} of bandwidth"
  )
  return {
    "case": "logits_exponential_ceiling",
    "method": "one exponential per logit of p and of q",
    "batch": batch,
    "seconds": seconds,
    "gb_per_s": rate,
    "fraction_of_bandwidth": rate / bandwidth,
  }


def logits_rows(batches, bandwidth: float) -> list[dict]:
  import klax

  def hand(p_logits, q_logits):
    log_p = jax.nn.log_softmax(p_logits)
    return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(q_logits)), axis=-1)

  methods = {
    "klax.kl_divergence_logits": jax.jit(klax.kl_divergence_logits),
    "hand-written log_softmax": jax.jit(hand),
  }
  rows = []
  print(f"logits KL over (batch, {VOCABULARY}) (memory bandwidth {bandwidth:.1f} GB/s):")
  # Logit noise 0.3: KL ≈ 0.05 per row. Noise 1e-3 (a policy next to its reference): KL ≈ 5e-7,
  # where klax recomputes rows in its cancellation-free form; the error is against float64.
  for noise in (0.3, 1e-3):
    for batch in batches:
      key_p, key_q = jax.random.split(jax.random.key(batch))
      p_logits = 3.0 * jax.random.normal(key_p, (batch, VOCABULARY))
      q_logits = p_logits + noise * jax.random.normal(key_q, (batch, VOCABULARY))
      exact = _kl_float64(np.asarray(p_logits[:4]), np.asarray(q_logits[:4]))
      if noise == 0.3:
        rows.append(exponential_ceiling_row(p_logits, q_logits, bandwidth))
      for name, fn in methods.items():
        seconds = _best_time(fn, p_logits, q_logits)
        error = np.max(np.abs(np.asarray(fn(p_logits[:4], q_logits[:4])) / exact - 1))
        rate = (p_logits.nbytes + q_logits.nbytes) / seconds / 1e9
        rows.append(
          {
            "case": "logits",
            "method": name,
            "batch": batch,
            "logit_noise": noise,
            "seconds": seconds,
            "gb_per_s": rate,
            "fraction_of_bandwidth": rate / bandwidth,
            "max_relative_error": float(error),
          }
        )
        print(
          f"  noise {noise:<6} B={batch:<6} {name:<26} {seconds * 1e3:9.2f} ms  {rate:7.2f} GB/s  "
          f"{rate / bandwidth:6.1%} of bandwidth  relative error {error:.1e}"
        )
  return rows


def _kl_float64(p_logits, q_logits):
  from scipy.special import log_softmax

  log_p = log_softmax(p_logits.astype(np.float64), -1)
  log_q = log_softmax(q_logits.astype(np.float64), -1)
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def knn_rows(sizes) -> list[dict]:
  import klax

  def scipy_knn(x, y):  # The same estimator (k = 1) with scipy's k-d tree.
    from scipy.spatial import cKDTree

    n, d = x.shape
    rho = cKDTree(x).query(x, k=2)[0][:, 1]
    nu = cKDTree(y).query(x, k=1)[0]
    return d * np.mean(np.log(nu / rho)) + np.log(len(y) / (n - 1))

  rows = []
  print("kNN KL estimator (k = 1, 2-D, n = m):")
  for n in sizes:
    key_x, key_y = jax.random.split(jax.random.key(n))
    x = jax.random.normal(key_x, (n, 2))
    y = 1.0 + jax.random.normal(key_y, (n, 2))
    klax_s = _best_time(jax.jit(klax.kl_divergence_knn), x, y, repeats=2)
    x_np, y_np = np.asarray(x), np.asarray(y)
    start = time.perf_counter()
    reference = scipy_knn(x_np, y_np)
    scipy_s = time.perf_counter() - start
    value = float(klax.kl_divergence_knn(x, y))
    rows.append(
      {
        "case": "knn",
        "n": n,
        "klax_s": klax_s,
        "scipy_ckdtree_s": scipy_s,
        "klax": value,
        "scipy": float(reference),
      }
    )
    print(
      f"  n={n:<7} klax {klax_s:8.3f} s   scipy cKDTree {scipy_s:8.3f} s   estimates {value:.4f} / {reference:.4f} (exact 1.0)"
    )
  return rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
  parser.add_argument("--out", default="results/benchmarks")
  parser.add_argument("--cases", default="mvn,logits,knn", help="comma-separated subset")
  parser.add_argument("--timeout", type=float, default=300.0, help="seconds per MVN case")
  args = parser.parse_args(argv)
  cases = set(args.cases.split(","))
  if args.quick:
    mvn_cases, logits_batches, knn_sizes = [(2, 64), (16, 16)], [4], [500]
  else:
    mvn_cases = [(2, 100_000), (16, 10_000), (64, 1_000)]
    logits_batches, knn_sizes = [64, 256, 1_024, 4_096], [1_000, 10_000, 100_000]
  # --quick: every MVN measurement in one child process, and a 16 MiB bandwidth array.
  rows = mvn_rows(mvn_cases, args.timeout, one_process=args.quick) if "mvn" in cases else []
  bandwidth = memory_bandwidth(22 if args.quick else 28)
  if "logits" in cases:
    rows += logits_rows(logits_batches, bandwidth)
  if "knn" in cases:
    rows += knn_rows(knn_sizes)
  ratios = mvn_ratios(rows)
  for line in ratios:
    print(line)
  out = Path(args.out)
  payload = {
    "rows": rows,
    "ratios": ratios,
    "memory_bandwidth_gb_per_s": bandwidth,
    **_io.provenance(),
  }
  _io.write_json_atomic(out / "divergence_throughput.json", payload)
  print(f"wrote {out / 'divergence_throughput.json'}")
  return payload


def mvn_ratios(rows) -> list[str]:
  """klax's time over the fastest other method's, for each d (1.0 = as fast as the fastest)."""
  lines = []
  for d in sorted({r["d"] for r in rows if r["case"] == "mvn"}):
    timed = {
      r["method"]: r["seconds"]
      for r in rows
      if r["case"] == "mvn" and r["d"] == d and "seconds" in r
    }
    others = {m: s for m, s in timed.items() if m != "klax.kl_divergence"}
    if "klax.kl_divergence" in timed and others:
      fastest = min(others, key=others.get)
      lines.append(
        f"MVN d={d}: klax time / fastest other ({fastest}) = {timed['klax.kl_divergence'] / others[fastest]:.2f}"
      )
  return lines


if __name__ == "__main__":
  main()
