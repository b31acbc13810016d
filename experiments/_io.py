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
