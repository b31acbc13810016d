"""kNN estimators at scale: `klax.kl_divergence_knn` against scipy's cKDTree, and their bias at d = 10.

1. Time of `klax.kl_divergence_knn` (jitted; neighbours by cKDTree on the host on CPU) against
   the same estimate written with scipy's cKDTree directly (two trees, `workers=-1`), for
   n = m = 10³ … 10⁶ points, d ∈ {2, 10}, k ∈ {1, 5}. Each size runs in its own process with a
   timeout, so a size that takes too long is recorded as such.
2. Bias at d = 10: the mean error over seeds of `kl_divergence_knn` (N(0, I) ‖ N(0.5, 1.5² I))
   and `entropy_knn` (N(0, I) and the uniform on [0, 1]¹⁰) against their closed forms, with the
   standard error of that mean.

Prints a table and writes JSON (machine, device, versions). Run:
python experiments/benchmarks/knn_scale.py [--quick] [--out DIR] [--timeout S]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments import _io


def _exact_kl(d: int) -> float:  # KL(N(0, I) ‖ N(0.5·1, 1.5² I)), on paper.
  return 0.5 * d * (0.25 / 1.5**2 + math.log(1.5**2) + 1 / 1.5**2 - 1)


def _scipy_kl(x: np.ndarray, y: np.ndarray, k: int) -> float:
  import scipy.spatial

  rho, _ = scipy.spatial.cKDTree(x).query(x, k=[k + 1], workers=-1)
  nu, _ = scipy.spatial.cKDTree(y).query(x, k=[k], workers=-1)
  n, d = x.shape
  return float(d * np.mean(np.log(nu[:, 0] / rho[:, 0])) + np.log(len(y) / (n - 1)))


def _scale_case(n: int, d: int, k: int, queue) -> None:
  import jax

  import klax

  kx, ky = jax.random.split(jax.random.key(n + d + k))
  x = jax.random.normal(kx, (n, d))
  y = 0.5 + 1.5 * jax.random.normal(ky, (n, d))
  knn = jax.jit(klax.kl_divergence_knn, static_argnums=2)
  start = time.perf_counter()
  jax.block_until_ready(knn(x, y, k))
  first = time.perf_counter() - start
  start = time.perf_counter()
  value = float(knn(x, y, k))
  klax_s = time.perf_counter() - start
  xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
  start = time.perf_counter()
  reference = _scipy_kl(xn, yn, k)
  scipy_s = time.perf_counter() - start
  queue.put(
    {"first_call_s": first, "klax_s": klax_s, "scipy_s": scipy_s, "klax": value, "scipy": reference}
  )


def scale_rows(cases, timeout_s: float) -> list[dict]:
  context = multiprocessing.get_context("spawn")
  rows = []
  print(
    f"{'n':>9} {'d':>3} {'k':>2} {'klax s':>9} {'scipy s':>9} {'ratio':>6} {'klax':>8} {'scipy':>8}"
  )
  for n, d, k in cases:
    queue = context.Queue()
    process = context.Process(target=_scale_case, args=(n, d, k, queue))
    process.start()
    process.join(timeout_s)
    row = {"case": "scale", "n": n, "d": d, "k": k, "exact": _exact_kl(d)}
    if process.is_alive():
      process.kill()
      process.join()
      row["timed_out"] = f"no result in {timeout_s:.0f} s"
      print(f"{n:>9} {d:>3} {k:>2} timed out after {timeout_s:.0f} s")
    elif queue.empty():
      row["failed"] = f"exit code {process.exitcode}"
      print(f"{n:>9} {d:>3} {k:>2} failed (exit code {process.exitcode})")
    else:
      row |= queue.get()
      row["ratio"] = row["klax_s"] / row["scipy_s"]
      print(
        f"{n:>9} {d:>3} {k:>2} {row['klax_s']:9.3f} {row['scipy_s']:9.3f} {row['ratio']:6.2f} "
        f"{row['klax']:8.4f} {row['scipy']:8.4f}"
      )
    rows.append(row)
  return rows


def bias_rows(sizes, seeds: int, d: int = 10, k: int = 1) -> list[dict]:
  import jax

  import klax

  kl = jax.jit(klax.kl_divergence_knn, static_argnums=2)
  entropy = jax.jit(klax.entropy_knn, static_argnums=1)
  exact = {
    "kl N(0,I) || N(0.5,1.5^2 I)": _exact_kl(d),
    "entropy N(0,I)": 0.5 * d * math.log(2 * math.pi * math.e),
    "entropy uniform [0,1]^d": 0.0,
  }
  rows = []
  print(f"bias at d = {d}, k = {k} (mean error over {seeds} seeds ± its standard error):")
  for n in sizes:
    errors = {name: [] for name in exact}
    for seed in range(seeds):
      kx, ky = jax.random.split(jax.random.key(1000 + seed))
      x = jax.random.normal(kx, (n, d))
      y = 0.5 + 1.5 * jax.random.normal(ky, (n, d))
      errors["kl N(0,I) || N(0.5,1.5^2 I)"].append(float(kl(x, y, k)))
      errors["entropy N(0,I)"].append(float(entropy(x, k)))
      errors["entropy uniform [0,1]^d"].append(float(entropy(jax.random.uniform(ky, (n, d)), k)))
    for name, values in errors.items():
      error = np.asarray(values) - exact[name]
      stderr = float(error.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else float("nan")
      rows.append(
        {
          "case": "bias",
          "estimator": name,
          "n": n,
          "d": d,
          "k": k,
          "exact": exact[name],
          "mean_error": float(error.mean()),
          "stderr_of_mean": stderr,
          "seed_sd": float(error.std(ddof=1)) if seeds > 1 else float("nan"),
        }
      )
      print(f"  n={n:<8} {name:<30} {error.mean():+8.4f} ± {stderr:.4f}")
  return rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (harness check only)")
  parser.add_argument("--out", default="results/benchmarks")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per size")
  parser.add_argument("--sizes", default=None, help="comma-separated n (default 10^3 … 10^6)")
  parser.add_argument("--dims", default="2,10", help="comma-separated d for the timings")
  parser.add_argument("--bias-sizes", default="1000,10000,100000")
  parser.add_argument("--cases", default="scale,bias")
  args = parser.parse_args(argv)
  cases = set(args.cases.split(","))
  if args.quick:
    sizes, dims, ks, bias_sizes, seeds = [1000], [2], [1, 5], [500], 2
  else:
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [10**3, 10**4, 10**5, 10**6]
    dims, ks, seeds = [int(d) for d in args.dims.split(",")], [1, 5], 5
    bias_sizes = [int(s) for s in args.bias_sizes.split(",")]
  rows = []
  if "scale" in cases:
    rows += scale_rows([(n, d, k) for d in dims for k in ks for n in sizes], args.timeout)
  if "bias" in cases:
    rows += bias_rows(bias_sizes, seeds)
  payload = {"rows": rows, "quick": args.quick, **_io.provenance()}
  out = Path(args.out)
  name = (
    "knn_scale.json"
    if args.quick or cases == {"scale", "bias"}
    else f"knn_scale_{args.cases.replace(',', '_')}_{args.dims.replace(',', '_')}.json"
  )
  _io.write_json_atomic(out / name, payload)
  print(f"wrote {out / name}")
  return payload


if __name__ == "__main__":
  main()
