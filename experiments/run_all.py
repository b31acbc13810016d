"""Runs the experiments (all, or the ones named); writes `report.md` with their tables and figures.

Each experiment runs in its own process (some enable float64 for the whole process, as the seeds'
scipy computations are float64). Run: python -m experiments [--quick] [--out DIR] [NAME ...]

`--out` is checked and locked before the first experiment runs (as each experiment's own folder,
`DIR/NAME`, is by its script: see `experiments._cli`); the first experiment that fails stops the
runner with its name and exit status, and report.md is written (atomically) only when all succeed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make the `experiments` package importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import _folder
from experiments import _io

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = (
  "forward_vs_reverse",
  "mle_is_forward_kl",
  "elbo_identity",
  "gradient_estimators",
  "kl_estimators",
  "mode_seeking_phase",
  "alpha_interpolation",
  "bayesian_logistic_regression",
  "vae_digits",
  "kl_regularised_policy",
)


def run_one(name: str, out: Path, quick: bool) -> float:
  """Runs one experiment's command line; returns its wall time. Exits if it fails; stops it
  (SIGTERM, which lets it remove its temporary files) if this process is interrupted."""
  command = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(out / name)]
  if quick:
    command.append("--quick")
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=ROOT)
  try:
    status = process.wait()
  except BaseException:
    process.terminate()
    process.wait(timeout=60)
    raise
  if status != 0:
    raise SystemExit(f"experiment {name} failed (exit status {status}); report.md not written.")
  return time.perf_counter() - start


def _recorded_wall_time(folder: Path) -> float | None:
  try:
    return float(json.loads((folder / "results.json").read_text())["wall_time_s"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def report(out: Path, names, wall_times: dict) -> str:
  """`report.md`'s text: each experiment's key table, claims and figures.

  It covers the experiments just run (`names`) and every other one whose outputs are already in
  `out` (run earlier, e.g. `python -m experiments NAME` for one of them), in the order of
  EXPERIMENTS; their wall times are those recorded in their results.json.
  """
  present = [n for n in EXPERIMENTS if n in names or (out / n / "table.md").exists()]
  lines = ["# klax experiments", ""]
  for name in present:
    folder = out / name
    wall = wall_times.get(name, _recorded_wall_time(folder))
    lines += [f"## {name}", ""]
    if wall is not None:
      lines += [f"Wall time: {wall:.1f} s.", ""]
    lines += [(folder / "table.md").read_text().strip(), ""]
    for figure in sorted(folder.glob("*.png")):
      lines += [f"![{name}: {figure.stem}]({name}/{figure.name})", ""]
  return "\n".join(lines)


def main(argv=None) -> Path:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "names", nargs="*", help=f"experiments to run (default: all of {EXPERIMENTS})"
  )
  parser.add_argument("--quick", action="store_true", help="small sizes")
  parser.add_argument("--out", default="results", help="output folder")
  args = parser.parse_args(argv)
  names = args.names or list(EXPERIMENTS)
  unknown = sorted(set(names) - set(EXPERIMENTS))
  if unknown:
    parser.error(f"unknown experiment(s) {unknown}; choose from {EXPERIMENTS}")
  out = Path(args.out)
  from tqdm.auto import tqdm

  # The folder is checked (and locked against a second runner) before any experiment runs.
  with _io.terminate_raises(), _folder.OutputFolder(out) as folder:
    wall_times = {}
    for name in tqdm(names, desc="experiments", unit="experiment"):
      wall_times[name] = run_one(name, out, args.quick)
    folder.stage("report.md", report(out, names, wall_times).encode())
    folder.commit()
  print(f"wrote {out / 'report.md'}")
  return out / "report.md"


if __name__ == "__main__":
  main()
