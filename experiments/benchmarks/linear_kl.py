"""Per-token KL of two linear heads: `klax.kl_divergence_linear` against dense logits and a loop.

KL(p ‖ q) per token with p's logits `p_hidden @ p_weight` and q's `q_hidden @ q_weight`
([N, D] @ [D, V]), three ways:
- `klax.kl_divergence_linear` (chunks of tokens and vocabulary, never the N × V logits),
- dense: `klax.kl_divergence_logits(p_hidden @ p_weight, q_hidden @ q_weight)` (both [N, V]
  logits in memory),
- a hand-written chunked loop: `lax.map` over chunks of tokens, each chunk's full-vocabulary
  logits and the log-softmax formula (what users write to save memory, with `jax.checkpoint`
  so that its gradient recomputes a chunk instead of keeping it).
Tokens per second for the value and for value + gradient w.r.t. all four inputs, and each
compiled program's temporary memory (XLA's memory analysis; a program needing more than
`--memory-gib` is compiled but not run). Each (size, method, mode) runs in its own process with
a timeout. Prints a table and writes JSON. Runs unchanged on GPU (`jax.devices()` decides). Run:
python experiments/benchmarks/linear_kl.py [--quick] [--out DIR] [--sizes N:V:D,...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments import _io

METHODS = ("klax.kl_divergence_linear", "dense kl_divergence_logits", "hand-written chunked loop")
HAND_CHUNK = 512


def _function(method: str, grad: bool):
  import jax
  import jax.numpy as jnp

  import klax

  def hand(hp, wp, hq, wq):
    n = hp.shape[0]
    chunk = min(HAND_CHUNK, n)

    @jax.checkpoint
    def one(rows):
      log_p = jax.nn.log_softmax(rows[0] @ wp)
      return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(rows[1] @ wq)), axis=-1)

    split = [x[: n - n % chunk].reshape(-1, chunk, x.shape[1]) for x in (hp, hq)]
    return jax.lax.map(one, split).reshape(-1)  # N a multiple of the chunk here.

  fn = {
    METHODS[0]: klax.kl_divergence_linear,
    METHODS[1]: lambda hp, wp, hq, wq: klax.kl_divergence_logits(hp @ wp, hq @ wq),
    METHODS[2]: hand,
  }[method]
  if grad:
    return jax.jit(jax.value_and_grad(lambda *x: jnp.sum(fn(*x)), argnums=(0, 1, 2, 3)))
  return jax.jit(fn)


def _inputs(n: int, v: int, d: int):
  import jax

  keys = jax.random.split(jax.random.key(0), 4)
  hp = jax.random.normal(keys[0], (n, d))
  wp = jax.random.normal(keys[1], (d, v)) / d**0.5
  hq = hp + 0.3 * jax.random.normal(keys[2], (n, d))
  wq = wp + 0.3 * jax.random.normal(keys[3], (d, v)) / d**0.5
  return hp, wp, hq, wq


def _case(method, n, v, d, grad, memory_gib, repeats, queue) -> None:
  """One measurement in a child process: puts a dict (seconds, temp bytes, first values)."""
  import jax
  import numpy as np

  fn = _function(method, grad)
  shapes = [jax.ShapeDtypeStruct(s, "float32") for s in ((n, d), (d, v), (n, d), (d, v))]
  compiled = fn.lower(*shapes).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  row = {"temp_gib": temp / 2**30}
  if temp > memory_gib * 2**30:
    queue.put(row | {"skipped": f"needs {temp / 2**30:.1f} GiB of temporaries"})
    return
  inputs = _inputs(n, v, d)
  out = jax.block_until_ready(compiled(*inputs))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*inputs))
    best = min(best, time.perf_counter() - start)
  value = out[0] if grad else out
  first = np.asarray(value).reshape(-1)[:4].tolist()
  queue.put(row | {"seconds": best, "tokens_per_s": n / best, "first_values": first})


def run(sizes, memory_gib: float, timeout_s: float, repeats: int) -> list[dict]:
  context = multiprocessing.get_context("spawn")
  rows = []
  for n, v, d in sizes:
    for grad in (False, True):
      for method in METHODS:
        queue = context.Queue()
        args = (method, n, v, d, grad, memory_gib, repeats, queue)
        process = context.Process(target=_case, args=args)
        process.start()
        process.join(timeout_s)
        row = {"method": method, "n": n, "v": v, "d": d, "mode": "value+grad" if grad else "value"}
        if process.is_alive():
          process.kill()
          row["skipped"] = f"no result in {timeout_s:.0f} s"
        elif queue.empty():
          row["skipped"] = f"failed (exit code {process.exitcode}, out of memory?)"
        else:
          row |= queue.get()
        rows.append(row)
        print(_line(row), flush=True)
  return rows


def _line(row) -> str:
  head = f"N={row['n']:<6} V={row['v']:<7} D={row['d']:<4} {row['mode']:<10} {row['method']:<27}"
  memory = f"temp {row['temp_gib']:8.3f} GiB" if "temp_gib" in row else ""
  if "seconds" in row:
    return f"{head} {row['seconds']:9.3f} s {row['tokens_per_s']:10.0f} tokens/s  {memory}"
  return f"{head} {row['skipped']}  {memory}"


def ratios(rows) -> list[str]:
  """klax's time over the dense formula's and the hand loop's, per size and mode."""
  lines = []
  for key in sorted({(r["n"], r["v"], r["d"], r["mode"]) for r in rows}):
    timed = {
      r["method"]: r["seconds"]
      for r in rows
      if (r["n"], r["v"], r["d"], r["mode"]) == key and "seconds" in r
    }
    if METHODS[0] in timed:
      parts = [f"{m} {timed[METHODS[0]] / timed[m]:.2f}" for m in METHODS[1:] if m in timed]
      if parts:
        lines.append(f"N={key[0]} V={key[1]} D={key[2]} {key[3]}: klax time / " + ", ".join(parts))
  return lines


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
  parser.add_argument("--out", default="results/benchmarks")
  parser.add_argument("--sizes", default="4096:32000:256", help="N:V:D,... (full run)")
  parser.add_argument("--memory-gib", type=float, default=24.0, help="largest program run")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
  args = parser.parse_args(argv)
  if args.quick:
    sizes, repeats = [(64, 500, 16)], 1
  else:
    sizes = [tuple(int(x) for x in size.split(":")) for size in args.sizes.split(",")]
    repeats = 3
  rows = run(sizes, args.memory_gib, args.timeout, repeats)
  lines = ratios(rows)
  for line in lines:
    print(line)
  out = Path(args.out)
  payload = {"rows": rows, "ratios": lines, "memory_gib": args.memory_gib, **_io.provenance()}
  _io.write_json_atomic(out / "linear_kl.json", payload)
  print(f"wrote {out / 'linear_kl.json'}")
  return payload


if __name__ == "__main__":
  main()
