"""The command line every experiment shares: --quick, --out, results.json, table.md, figures."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments import _io


def main(
  name: str,
  description: str,
  config_class,
  run: Callable,
  table: Callable[[dict], str],
  figures: dict[str, Callable[[dict, Path], None]],
  argv=None,
  seed: int | None = None,
) -> dict:
  """Parses `--quick`/`--out`, runs the experiment, writes its outputs, prints its table.

  Writes to the output folder: `results.json` (config, the PRNG seed every key derives from,
  results, versions, device, wall time; atomically), `table.md` (the key table) and one PNG per entry of `figures`.
  """
  parser = argparse.ArgumentParser(prog=f"{name}.py", description=description)
  parser.add_argument("--quick", action="store_true", help="small sizes (what the tests run)")
  parser.add_argument("--out", default=f"results/{name}", help="output folder")
  parser.add_argument(
    "--repeat",
    metavar="RESULTS_JSON",
    help="re-run with the config recorded in a results.json and check that every number agrees",
  )
  args = parser.parse_args(argv)
  if args.repeat:
    recorded = _io.recorded_run(Path(args.repeat), name, seed)
    config = _io.config_from_dict(config_class, recorded["config"], out=args.out)
  else:
    config = config_class.quick(out=args.out) if args.quick else config_class(out=args.out)
  start = time.perf_counter()
  results = run(config)
  wall = time.perf_counter() - start
  if args.repeat:
    _io.check_reproduced(recorded, results)
  out = Path(config.out)
  out.mkdir(parents=True, exist_ok=True)
  for filename, plot in figures.items():
    plot(results, out / filename)
  text = table(results)
  payload = {
    "experiment": name,
    "config": _io.config_dict(config),
    "key_seed": seed,
    "results": results,
    "wall_time_s": wall,
    **_io.provenance(),
  }
  _io.write_json_atomic(out / "results.json", payload)
  (out / "table.md").write_text(text + "\n")
  print(text)
  print(f"\n{name}: {wall:.1f} s; wrote {out}/results.json, table.md and {', '.join(figures)}")
  return results


def pyplot():
  """matplotlib's pyplot: on the non-interactive Agg backend, except inside a notebook's kernel,
  whose inline backend is left alone."""
  import matplotlib

  if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, path: Path) -> None:
  """Lays out, writes (PNG, 120 dpi) and closes a figure."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
