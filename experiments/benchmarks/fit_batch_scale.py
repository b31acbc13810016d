"""Scale: `klax.fit_batch` with up to 1,000,000 restarts of seed 001's 1-D reverse-KL problem.

Prints wall time, throughput and the process's peak resident memory for each batch size, and
writes them to JSON. Run: python experiments/benchmarks/fit_batch_scale.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.scipy.stats import norm

import klax

try:
  from experiments import _io
except ImportError:  # pragma: no cover
  import sys

  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
  from experiments import _io


def log_p(x):
  return jnp.logaddexp(norm.logpdf(x, -3.0, 1.2), norm.logpdf(x, 3.0, 1.2)) - jnp.log(2.0)


def run(batch_sizes, num_steps, num_samples, chunk_size) -> list[dict]:
  loss = klax.reverse_kl_loss(klax.families.normal(), log_p, num_samples)
  optimizer = optax.adam(1e-2)
  rows = []
  for size in batch_sizes:
    starts = {"loc": jnp.linspace(-6.0, 6.0, size), "log_scale": jnp.zeros(size)}
    start = time.perf_counter()
    result = klax.fit_batch(
      loss,
      starts,
      optimizer,
      jax.random.key(0),
      num_steps,
      chunk_size=chunk_size,
      trace_every=num_steps,
    )
    jax.block_until_ready(result)
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows.append(
      {
        "restarts": size,
        "steps": num_steps,
        "samples": num_samples,
        "wall_s": wall,
        "sample_steps_per_s": size * num_steps * num_samples / wall,
        "peak_rss_gib": peak_gib,
        "diverged": int(jnp.sum(result.diverged)),
      }
    )
    print(
      f"{size:>9} restarts  {wall:8.1f} s  {rows[-1]['sample_steps_per_s']:.3g} sample-steps/s"
      f"  peak RSS {peak_gib:.2f} GiB  diverged {rows[-1]['diverged']}",
      flush=True,
    )
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default="results/benchmarks")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--chunk-size", type=int, default=1 << 16)
  args = parser.parse_args(argv)
  sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000, 1_000_000)
  rows = run(sizes, 20 if args.quick else args.steps, 64, args.chunk_size)
  out = Path(args.out)
  _io.write_json_atomic(out / "fit_batch_scale.json", {"rows": rows, **_io.provenance()})
  print(f"wrote {out / 'fit_batch_scale.json'}")


if __name__ == "__main__":
  main()
