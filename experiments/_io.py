"""Experiment outputs: provenance, JSON, atomic writes, and the signal handling around them.

Every output file is written to a temporary file in its own folder (`.NAME.klax-XXXX.tmp`),
fsynced, and renamed over `NAME` (os.replace), so a reader never sees a partial file; the
temporary file is removed on any error or interruption.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import tempfile
import threading
from importlib import metadata
from pathlib import Path

TEMP = ".klax-"  # In the name of every temporary file: `.NAME.klax-XXXX.tmp`.


class OutputError(SystemExit):
  """An output folder that cannot be used or written: exits with status 1 and the message."""


class Terminated(SystemExit):
  """What SIGTERM raises under `terminate_raises`: exit status 143 (128 + SIGTERM)."""


def provenance() -> dict:
  """Library versions and the device the run used."""
  import jax

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


def json_bytes(payload) -> bytes:
  """`payload` as indented JSON (NaN and ±inf as JSON5's NaN/Infinity, which json reads back)."""
  return json.dumps(payload, indent=2, default=_to_json).encode()


def _to_json(value):
  """Numbers held in numpy or JAX scalars/arrays become plain floats or lists."""
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# The file-system calls that change a file: every output goes through these (fault-injection tests
# replace them to fail or be interrupted at each one in turn).
def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view) :]


def _fsync(fd: int) -> None:
  os.fsync(fd)


def _replace(source: Path, target: Path) -> None:
  os.replace(source, target)


def _link(source: Path, target: Path) -> None:
  os.link(source, target)


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def temp_beside(path: Path) -> tuple[int, Path]:
  fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP}", suffix=".tmp")
  return fd, Path(name)


def stage_bytes(path: Path, data: bytes) -> Path:
  """Writes `data` to a new fsynced temporary file beside `path` (the mode a plain open() gives,
  not mkstemp's 0600) and returns its path; removes it if anything fails or interrupts."""
  fd, temp = temp_beside(path)
  try:
    try:
      _write_all(fd, data)
      os.fchmod(fd, 0o666 & ~umask())
      _fsync(fd)
    finally:
      os.close(fd)
  except BaseException:
    temp.unlink(missing_ok=True)
    raise
  return temp


def write_bytes_atomic(path: Path, data: bytes) -> None:
  """Replaces `path` by `data` in one rename: an interruption or error (a full disk) leaves the
  previous `path` intact and no temporary file behind."""
  temp = stage_bytes(path, data)
  try:
    _replace(temp, path)
  except BaseException:
    temp.unlink(missing_ok=True)
    raise
  fsync_folder(path.parent)


def write_json_atomic(path: Path, payload: dict) -> None:
  """`json_bytes(payload)` into `path` (its folder created), by `write_bytes_atomic`."""
  data = json_bytes(payload)  # A value that cannot be serialised fails before any file exists.
  path.parent.mkdir(parents=True, exist_ok=True)
  write_bytes_atomic(path, data)


def fsync_folder(folder: Path) -> None:
  """Makes the renames in `folder` durable (best effort: some file systems refuse a folder)."""
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      _fsync(fd)
    finally:
      os.close(fd)


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame):
  raise Terminated(128 + signal.SIGTERM)


@contextlib.contextmanager
def terminate_raises():
  """Inside the block SIGTERM raises `Terminated`, so cleanup (`finally`, `with`) runs, instead of
  ending the process at once; only where SIGTERM has its default action, in the main thread."""
  installed = _in_main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  if installed:
    signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    yield
  finally:
    if installed:
      signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_held():
  """SIGINT and SIGTERM that arrive inside the block take effect (their handlers run) at its end.

  Python handlers, not a blocked signal mask: JAX's threads would still take a masked signal.
  """
  previous = {}
  if _in_main_thread():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h is not None and h != signal.SIG_IGN}
  pending = []
  for number in previous:
    signal.signal(number, lambda signum, frame: pending.append(signum))
  try:
    yield
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
    for number in dict.fromkeys(pending):
      handler = previous[number]
      if callable(handler):
        handler(number, None)
      else:  # SIG_DFL: the default action, now.
        os.kill(os.getpid(), number)


def rescue(name: str, payload: dict) -> str:
  """Saves a run's results.json in a new temporary folder; says where (or why it could not)."""
  try:
    data = json_bytes(payload)
    folder = Path(tempfile.mkdtemp(prefix=f"klax-{name}-"))
    write_bytes_atomic(folder / "results.json", data)
  except Exception as error:
    return f"The results could not be saved elsewhere either ({error})."
  return f"The results are saved in {folder / 'results.json'}."
