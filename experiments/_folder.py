"""An experiment's output folder for one run: checked before the run, locked, written all at once.

A run's files are all written to temporary files first (`experiments._io.stage_bytes`), then
renamed over the outputs one after another with SIGINT and SIGTERM held back until the last rename
is done, and with the earlier ones put back if a rename fails: the folder holds the previous run's
complete outputs or the new run's, never a mix. An advisory lock (fcntl.flock on `.klax.lock`)
keeps a second run out of the folder while one writes to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

from experiments import _io
from experiments._io import OutputError

LOCK = ".klax.lock"  # Held (fcntl.flock) by the run writing into the folder; removed at its end.
_BACKUP = ".klax-backup"  # `.NAME.klax-backup`: the previous NAME, kept while a commit is renaming.
_PROBE_BYTES = 4096  # Written (and removed) before a run, to find a full or read-only folder.


class OutputFolder:
  """An experiment's output folder for one run: checked, locked, and written all at once.

  Entering creates the folder if needed and takes its lock (`OutputError` if another run holds
  it), then checks that a file can be written there (`OutputError` on a read-only or full file
  system, or no permission) and that the folder does not hold another experiment's results.json.
  `stage` and `stage_figure` write temporary files; `commit` renames them over the outputs,
  in the order they were staged. Leaving removes the temporary files and the lock.
  """

  def __init__(self, path: Path, experiment: str | None = None):
    self.path = Path(path)
    self.experiment = experiment
    self._staged: dict[str, Path] = {}
    self._lock: int | None = None

  def __enter__(self) -> OutputFolder:
    self._lock = _acquire(self.path)
    try:
      _remove_temporaries(self.path)  # Left by a killed run (SIGKILL, power loss).
      probe = _io.stage_bytes(self.path / "probe", bytes(_PROBE_BYTES))
      probe.unlink()
      if self.experiment is not None:
        _check_owner(self.path, self.experiment)
    except OSError as error:
      self._release()
      raise _folder_error(self.path, "cannot be written", error) from error
    except BaseException:
      self._release()
      raise
    return self

  def __exit__(self, *exc_info) -> None:
    try:
      with contextlib.suppress(OSError):
        for temp in self._staged.values():
          temp.unlink(missing_ok=True)
        _remove_temporaries(self.path)
    finally:
      self._release()

  def stage(self, name: str, data: bytes) -> None:
    """Writes the next output, `name`, to a temporary file."""
    self._staged[name] = _io.stage_bytes(self.path / name, data)

  def stage_figure(self, name: str, write: Callable[[Path], None]) -> None:
    """Stages the output `name` that `write(path)` writes (a figure's plot function)."""
    fd, temp = _io.temp_beside(self.path / name)
    os.close(fd)
    self._staged[name] = temp
    write(temp)
    if temp.stat().st_size == 0:
      raise RuntimeError(f"the plot function for {name} wrote nothing")
    os.chmod(temp, 0o666 & ~_io.umask())

  def commit(self) -> None:
    """Renames the staged files over the outputs; if a rename fails, puts back the ones done."""
    with _io.signals_held():
      backups: dict[str, Path] = {}
      done: list[str] = []
      try:
        for name in self._staged:
          if (self.path / name).exists():
            backups[name] = _backup(self.path / name)
        for name, temp in self._staged.items():
          _io._replace(temp, self.path / name)
          done.append(name)
      except BaseException:
        for name in _put_back(self.path, done, backups):
          del backups[name]  # Not put back: kept as `.NAME.klax-backup`, the only old copy.
        raise
      finally:
        for backup in backups.values():
          backup.unlink(missing_ok=True)
      self._staged.clear()
      _io.fsync_folder(self.path)

  def _release(self) -> None:
    if self._lock is not None:
      with contextlib.suppress(OSError):
        (self.path / LOCK).unlink()  # While still holding it: see `_acquire`.
      os.close(self._lock)
      self._lock = None


def _folder_error(path: Path, what: str, error: OSError) -> OutputError:
  reason = error.strerror or str(error)
  return OutputError(f"output folder {path} {what} ({reason}); nothing was run or written.")


def _acquire(path: Path) -> int:
  """Creates `path` and takes an exclusive lock on `path/LOCK`; returns the lock's descriptor."""
  if path.exists() and not path.is_dir():
    raise OutputError(f"output folder {path} is a file, not a folder; nothing was run or written.")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise _folder_error(path, "cannot be created", error) from error
  lock = path / LOCK
  while True:
    try:
      fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
      raise _folder_error(path, "cannot be written", error) from error
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      os.close(fd)
      if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise OutputError(
          f"output folder {path} is being written by another run (it holds {lock}): wait for it "
          "to finish or choose another --out; nothing was run or written."
        ) from error
      raise _folder_error(path, "cannot be locked", error) from error
    try:  # The holder removes the file before it lets go: a lock on a removed file is no lock.
      held = os.fstat(fd)
      current = os.stat(lock)
      if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)


def _remove_temporaries(folder: Path) -> None:
  for entry in folder.iterdir():
    if entry.name.startswith(".") and _io.TEMP in entry.name and entry.name.endswith(".tmp"):
      entry.unlink(missing_ok=True)


def _backup(target: Path) -> Path:
  """A second name for `target`'s current file (a hard link; a copy where links are refused)."""
  backup = target.with_name(f".{target.name}{_BACKUP}")
  backup.unlink(missing_ok=True)
  try:
    _io._link(target, backup)
  except OSError:
    _io._replace(_io.stage_bytes(target, target.read_bytes()), backup)
  return backup


def _put_back(folder: Path, done: list[str], backups: dict[str, Path]) -> list[str]:
  """Undoes the renames of `done` (newest first); returns the names it could not put back."""
  failed = []
  for name in reversed(done):
    try:
      if name in backups:
        _io._replace(backups[name], folder / name)
      else:
        (folder / name).unlink(missing_ok=True)
    except OSError:
      failed.append(name)
  return [name for name in failed if name in backups]


def _check_owner(folder: Path, experiment: str) -> None:
  """Refuses a folder whose results.json is another experiment's: the two runs' files would mix."""
  try:
    other = json.loads((folder / "results.json").read_text()).get("experiment")
  except (OSError, ValueError, AttributeError, RecursionError):
    return  # No results.json, or not a record: it is replaced.
  if isinstance(other, str) and other != experiment:
    raise OutputError(
      f"output folder {folder} holds the outputs of experiment {other!r}; a run of "
      f"{experiment!r} would mix the two: choose another --out. Nothing was run or written."
    )
