"""Shared output helpers for experiments: provenance and atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import jax


def provenance() -> dict:
  """Library versions and the device the run used."""
  versions = {}
  for package in ("jax", "jaxlib", "optax", "distrax", "chex", "tfp-nightly", "numpy", "scipy"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  return {
    "versions": versions,
    "python": platform.python_version(),
    "machine": platform.machine(),
    "devices": [str(d) for d in jax.devices()],
    "x64": bool(jax.config.jax_enable_x64),
  }


def write_json_atomic(path: Path, payload: dict) -> None:
  """Writes JSON to a temporary file beside `path`, then renames it into place.

  An interruption (Ctrl-C, a crash, a value that cannot be serialised) leaves the previous
  `path` intact and no temporary file behind.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  handle = tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp")
  try:
    with handle:
      json.dump(payload, handle, indent=2, default=_to_json)
    os.chmod(handle.name, 0o666 & ~_umask())  # The mode a plain open() would give, not 0600.
    os.replace(handle.name, path)
  except BaseException:
    Path(handle.name).unlink(missing_ok=True)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _to_json(value):
  """Numbers held in numpy or JAX scalars/arrays become plain floats or lists."""
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def config_dict(config) -> dict:
  return dataclasses.asdict(config)


def recorded_run(path: Path, name: str, seed) -> dict:
  """A results.json to repeat: it must be this experiment's and use this script's seed."""
  recorded = json.loads(path.read_text())
  if recorded.get("experiment") != name:
    raise SystemExit(f"{path} records experiment {recorded.get('experiment')!r}, not {name!r}.")
  if recorded.get("key_seed") != seed:
    raise SystemExit(
      f"{path} was run with seed {recorded.get('key_seed')}; this script's SEED is {seed}."
    )
  return recorded


def config_from_dict(config_class, values: dict, out: str):
  """The dataclass config recorded in results.json (JSON lists back to tuples), writing to `out`."""
  defaults = config_class()
  fields = {}
  for field in dataclasses.fields(config_class):
    if field.name in values:
      value = values[field.name]
      fields[field.name] = (
        tuple(value) if isinstance(getattr(defaults, field.name), tuple) else value
      )
  return config_class(**{**fields, "out": out})


def differences(recorded, repeated, path: str = "results") -> list[str]:
  """Paths where two JSON trees differ (wall times, which never repeat, are ignored)."""
  if isinstance(recorded, dict) and isinstance(repeated, dict):
    keys = (set(recorded) | set(repeated)) - {"wall_time_s"}
    return [
      d for k in sorted(keys) for d in differences(recorded.get(k), repeated.get(k), f"{path}.{k}")
    ]
  if isinstance(recorded, list) and isinstance(repeated, list) and len(recorded) == len(repeated):
    return [
      d
      for i, (a, b) in enumerate(zip(recorded, repeated, strict=True))
      for d in differences(a, b, f"{path}[{i}]")
    ]
  return [] if recorded == repeated else [f"{path}: {recorded!r} then {repeated!r}"]


def check_reproduced(recorded: dict, results: dict) -> None:
  """Compares a repeated run's results with the recorded ones; exits non-zero if any differ."""
  repeated = json.loads(json.dumps(results, default=_to_json))
  found = differences(recorded["results"], repeated)
  now = provenance()
  if recorded.get("versions") != now["versions"]:
    print(
      f"note: versions differ from the recorded run: {recorded.get('versions')} vs {now['versions']}"
    )
  if found:
    listing = "\n  ".join(found[:20])
    raise SystemExit(f"not reproduced: {len(found)} value(s) differ:\n  {listing}")
  print("reproduced: every recorded number is identical")
