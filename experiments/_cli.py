"""The command line every experiment shares (--quick, --out, --repeat) and the files it writes.

What a user sees when something goes wrong (exit status 1 and one message unless stated):

- `--out` cannot be used: it is a file, cannot be created, is read-only, full, or not writable
  ("output folder DIR cannot be written (Read-only file system); nothing was run or written."),
  or it holds another experiment's results.json. Checked BEFORE the run, so no run is lost.
- Another run is writing into the same `--out` (it holds the advisory lock `DIR/.klax.lock`,
  fcntl.flock): "output folder DIR is being written by another run ..."; checked before the run.
- The disk fills up (or any other write error) after the run: "NAME: the run finished but its
  outputs could not be written to DIR: ... The folder keeps its previous outputs. The results are
  saved in /tmp/klax-NAME-XXXX/results.json." The key table was printed before the writing began.
- A table or plot function that raises: its traceback, with a note that no output was written
  and where the results are saved.
- Ctrl-C (SIGINT: KeyboardInterrupt, with a traceback) or SIGTERM (exit status 143, no traceback) at
  any moment (during a compiled JAX computation, when it returns): the folder keeps its previous
  outputs if the signal came before all files were written, and holds the new ones (the signal
  then takes effect) if it came while they were being renamed into place.
- `--repeat FILE` with a damaged or foreign record: "--repeat FILE: is not valid JSON (...)",
  "... has no "results" entry", "... its config lacks field(s) [...]", and so on; checked before
  the run. A repeated run whose numbers differ: "not reproduced: N value(s) differ" with their
  paths (NaN compares equal to NaN).

In every case the folder holds either the previous run's complete outputs or the new run's
(results.json first, then table.md, then the figures, all renamed in one step), never a mix, a
truncated file, or a temporary file (`.NAME.klax-XXXX.tmp`), and the lock file is removed. (Only
SIGKILL or a crash of the machine can leave temporary files; the next run into the folder removes
them. Should putting an old file back itself fail, that file is kept as `.NAME.klax-backup`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

from experiments import _claims
from experiments import _folder
from experiments import _io
from experiments import _repeat

_clock = time.perf_counter  # The wall time in results.json (the fault-injection tests fix it).


def main(
  name: str,
  description: str,
  config_class,
  run: Callable,
  table: Callable[[dict], str],
  figures: dict[str, Callable[[dict, Path], None]],
  argv=None,
  seed: int | None = None,
  claims: Callable[[dict], list[_claims.Claim]] | None = None,
) -> dict:
  """Parses `--quick`/`--out`/`--repeat`, runs the experiment, writes its outputs, prints its table.

  Writes to the output folder: `results.json` (config, the PRNG seed every key derives from,
  results, versions, device, wall time), `table.md` (the key table) and one PNG per entry of
  `figures`, all at once (see the module docstring for what happens on each failure).
  `claims(results)`, when given, states the experiment's claims and checks them on the results:
  they go into results.json and, with a concluding sentence, under the table in table.md.
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
    recorded = _repeat.recorded_run(Path(args.repeat), name, seed, config_class)
    config = _repeat.config_from_dict(config_class, recorded["config"], out=args.out)
  else:
    config = config_class.quick(out=args.out) if args.quick else config_class(out=args.out)
  with _io.terminate_raises(), _folder.OutputFolder(Path(config.out), name) as folder:
    start = _clock()
    results = run(config)
    wall = _clock() - start
    if args.repeat:
      _repeat.check_reproduced(recorded, results)
    payload = {
      "experiment": name,
      "config": dataclasses.asdict(config),
      "key_seed": seed,
      "results": results,
      "claims": [],
      "wall_time_s": wall,
      **_io.provenance(),
    }
    _write_outputs(folder, name, payload, table, figures, claims)
  print(
    f"\n{name}: {wall:.1f} s; wrote {folder.path}/results.json, table.md and {', '.join(figures)}"
  )
  return results


def _write_outputs(
  folder, name: str, payload: dict, table: Callable, figures: dict, claims: Callable | None
) -> None:
  """Prints the table and writes every output; an error keeps the folder's previous outputs and
  saves results.json elsewhere (the message says where)."""
  results = payload["results"]
  try:
    text = table(results)
    if claims is not None:
      checked = claims(results)
      payload["claims"] = [c._asdict() for c in checked]
      text += "\n\n" + _claims.section(checked)
    print(text)
    folder.stage("results.json", _io.json_bytes(payload))
    folder.stage("table.md", (text + "\n").encode())
    for filename, plot in figures.items():
      folder.stage_figure(filename, lambda path, plot=plot: plot(results, path))
    folder.commit()
  except OSError as error:
    raise _io.OutputError(
      f"{name}: the run finished but its outputs could not be written to {folder.path}: {error}. "
      f"The folder keeps its previous outputs. {_io.rescue(name, payload)}"
    ) from error
  except Exception as error:
    error.add_note(f"{name}: no output was written to {folder.path}. {_io.rescue(name, payload)}")
    raise


def pyplot():
  """matplotlib's pyplot: on the non-interactive Agg backend, except inside a notebook's kernel,
  whose inline backend is left alone."""
  import matplotlib

  if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig, path: Path) -> None:
  """Lays out, writes (PNG, 120 dpi, by `_io.write_bytes_atomic`) and closes a figure."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  buffer = io.BytesIO()
  try:
    fig.savefig(buffer, format="png", dpi=120)
  finally:
    plt.close(fig)
  _io.write_bytes_atomic(Path(path), buffer.getvalue())
