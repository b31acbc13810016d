"""Latency of the main experiment in a fresh process: import, first compiled result, whole run.

A new Python process (nothing cached in memory; JAX's persistent compilation cache is off unless
the user turns it on) imports klax, then runs seed 001's first fit — L-BFGS on the seed's grid,
compile included — then the whole `forward_vs_reverse` experiment. Each phase's wall time is
printed and written to JSON.

Run: python experiments/benchmarks/latency.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments import _io

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, math, sys, time
start = time.perf_counter()
import jax
import klax
imported = time.perf_counter()
from experiments import forward_vs_reverse as fvr
import jax.numpy as jnp
with jax.enable_x64(True):  # As the experiment computes, in float64.
  grid = jnp.arange(-10.0, 10.0, 0.01)
  forward, _ = fvr.grid_objectives(grid)
  params, trace = fvr.minimise_lbfgs(forward, jnp.array([-3.0, math.log(1.2)]), 100)
  first = float(trace[-1])
first_result = time.perf_counter()
# --quick checks the harness: the whole experiment at tiny sizes (its own --quick is its tests').
tiny = dict(lbfgs_steps=20, wide_limits=(10.0,), num_starts=4, adam_steps=50)
config = fvr.Config(**tiny) if {quick} else fvr.Config()
fvr.run(config)
done = time.perf_counter()
print(json.dumps({{"import_s": imported - start, "first_result_s": first_result - imported,
                  "first_kl": first, "whole_run_s": done - first_result}}))
"""


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
  parser.add_argument("--out", default="results/benchmarks")
  args = parser.parse_args(argv)
  code = CHILD.format(quick=bool(args.quick))
  path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "PYTHONPATH": path}  # The child imports the `experiments` package.
  output = subprocess.run(
    [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=1800, env=env
  ).stdout
  timings = json.loads(output.strip().splitlines()[-1])
  print(f"import klax (with jax, distrax, TFP)   {timings['import_s']:7.2f} s")
  print(f"first result (compile + L-BFGS fit)    {timings['first_result_s']:7.2f} s")
  print(f"rest of forward_vs_reverse             {timings['whole_run_s']:7.2f} s")
  out = Path(args.out)
  _io.write_json_atomic(out / "latency.json", {**timings, "quick": args.quick, **_io.provenance()})
  print(f"wrote {out / 'latency.json'}")
  return timings


if __name__ == "__main__":
  main()
