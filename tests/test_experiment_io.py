"""Fault injection into the experiments' output writing: a tiny fake experiment, run in-process.

After every fault (an error, Ctrl-C or SIGTERM at each file-system write in turn, a full or
read-only file system, a second writer) the output folder holds the previous run's complete
outputs or the new run's, byte for byte: never a mix, a truncated file or a temporary file.
"""

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from experiments import _cli
from experiments import _folder
from experiments import _io

ROOT = Path(__file__).resolve().parents[1]

OPERATIONS = (
  "_write_all",
  "_fsync",
  "_replace",
  "_link",
)  # Every change to a file goes through these.


@dataclasses.dataclass(frozen=True)
class FakeConfig:
  size: int = 3
  scale: float = 1.0
  names: tuple[str, ...] = ("a", "b")
  out: str = "unused"

  @classmethod
  def quick(cls, **overrides):
    return cls(**{"size": 2, **overrides})


class Fake:
  """An experiment whose results (and figure) depend on `value`; `during_run` runs inside run()."""

  def __init__(self, value, rows=3, during_run=None):
    self.value, self.rows, self.during_run, self.calls = value, rows, during_run, 0

  def run(self, config):
    self.calls += 1
    if self.during_run:
      self.during_run()
    return {"value": self.value, "rows": [self.value] * self.rows, "nan": float("nan")}

  def main(self, folder, *args):
    figures = {"tiny.png": self.plot}
    argv = ["--out", str(folder), *args]
    return _cli.main(
      "fake", "A fake experiment.", FakeConfig, self.run, self.table, figures, argv, 7
    )

  @staticmethod
  def table(results):
    return f"| value |\n|---|\n| {results['value']} |"

  @staticmethod
  def plot(results, path):  # What _cli.save does with a rendered figure's bytes.
    _io.write_bytes_atomic(path, b"\x89PNG fake figure " + repr(results["value"]).encode())


def snapshot(folder: Path) -> dict:
  return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir())}


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch, tmp_path):
  """Wall time fixed (results.json is then byte-identical), rescued results under tmp_path, and
  Python's own SIGINT/SIGTERM handling (test runners may change both)."""
  monkeypatch.setattr(_cli, "_clock", lambda: 0.0)
  (tmp_path / "rescue").mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "rescue"))
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  yield
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # The CLI restored it.
  assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
  for number, handler in previous.items():
    signal.signal(number, handler)


@pytest.fixture
def outputs(tmp_path):
  """`(folder, old, new)`: the old (value 1) and new (value 2) outputs' bytes, and a `reset()`
  that puts the old outputs back into the folder."""
  folder = tmp_path / "out"
  Fake(1).main(folder)
  old = snapshot(folder)
  Fake(2).main(folder)
  new = snapshot(folder)

  def reset():
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, data in old.items():
      (folder / name).write_bytes(data)

  assert set(old) == set(new) == {"results.json", "table.md", "tiny.png"} and old != new
  return folder, old, new, reset


class Injector:
  """Counts the file-system operations; makes the `at`-th one fail in the way `fault` says."""

  def __init__(self, monkeypatch, fault=None, at=-1):
    self.count, self.fault, self.at = 0, fault, at
    for name in OPERATIONS:
      monkeypatch.setattr(_io, name, self._wrap(getattr(_io, name)))

  def _wrap(self, operation):
    def wrapped(*args):
      self.count += 1
      if self.count - 1 == self.at:
        if self.fault == "interrupt":
          raise KeyboardInterrupt
        if self.fault in ("sigint", "sigterm"):  # A real signal: the handlers decide.
          os.kill(os.getpid(), signal.SIGINT if self.fault == "sigint" else signal.SIGTERM)
        if self.fault in ("ENOSPC", "EROFS"):
          code = getattr(errno, self.fault)
          raise OSError(code, os.strerror(code))
      return operation(*args)

    return wrapped


def test_a_fault_at_any_write_leaves_the_old_or_the_new_outputs(outputs, monkeypatch, tmp_path):
  folder, old, new, reset = outputs
  reset()
  counter = Injector(monkeypatch)
  commit = _folder.OutputFolder.commit
  starts = []
  monkeypatch.setattr(
    _folder.OutputFolder, "commit", lambda self: (starts.append(counter.count), commit(self))
  )
  Fake(2).main(folder)
  total, renaming = counter.count, starts[0]  # Operations from `renaming` on are the commit's.
  assert total >= 12  # Probe, three staged files, backups, renames, folder fsyncs.
  outcomes = {}
  for fault in ("interrupt", "sigint", "sigterm", "ENOSPC", "EROFS"):
    for at in range(total):
      monkeypatch.undo()
      monkeypatch.setattr(_cli, "_clock", lambda: 0.0)
      monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "rescue"))
      reset()
      Injector(monkeypatch, fault, at)
      fake = Fake(2)
      raised = None
      try:
        fake.main(folder)
      except (KeyboardInterrupt, SystemExit) as error:
        raised = error
      after = snapshot(folder)
      assert after in (old, new), (fault, at, sorted(after))
      outcomes[fault, at] = "new" if after == new else "old"
      assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
      if after == old:  # The run was stopped: it says so.
        assert raised is not None, (fault, at)
      if fault == "interrupt":
        assert isinstance(raised, KeyboardInterrupt), at
      elif fault == "sigint" and raised is not None:
        assert isinstance(raised, KeyboardInterrupt), at
      elif fault == "sigterm":
        assert isinstance(raised, _io.Terminated) and raised.code == 143, at
      elif raised is not None:  # An OSError: before the run, or after it with the results saved.
        message = str(raised.code)
        assert str(folder) in message and os.strerror(getattr(errno, fault)) in message
        if fake.calls:
          rescued = Path(message.split("The results are saved in ")[1].rstrip("."))
          assert json.loads(rescued.read_text())["results"]["value"] == 2
        else:
          assert "nothing was run" in message
  # An interruption before the renames keeps the old outputs; a signal during them takes effect
  # after the last one (the new outputs); an error or interrupt raised by a rename puts the old
  # back. (An error in a folder's fsync, which is best effort, does not stop the run.)
  for fault in ("interrupt", "sigint", "sigterm"):
    assert all(outcomes[fault, at] == "old" for at in range(renaming)), fault
  assert [outcomes["ENOSPC", at] for at in range(total)].count("old") >= renaming - 2
  for fault in ("sigint", "sigterm"):
    assert all(outcomes[fault, at] == "new" for at in range(renaming, total)), fault
  assert [outcomes["interrupt", at] for at in range(renaming, total)].count("old") >= 3


def test_a_second_writer_is_refused_before_its_run(outputs):
  folder, _, new, reset = outputs
  reset()
  second = Fake(3)
  refused = []

  def run_the_second():
    with pytest.raises(SystemExit) as error:
      second.main(folder)
    refused.append(str(error.value.code))

  Fake(2, during_run=run_the_second).main(folder)
  assert second.calls == 0 and len(refused) == 1
  assert f"output folder {folder} is being written by another run" in refused[0]
  assert str(folder / _folder.LOCK) in refused[0]
  assert snapshot(folder) == new  # The first run's outputs, complete; no lock file left.


def test_a_lock_held_by_another_process_refuses_and_a_stale_lock_file_does_not(outputs):
  folder, _, new, reset = outputs
  reset()
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
      "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
      str(folder / _folder.LOCK),
    ],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    fake = Fake(2)
    with pytest.raises(SystemExit, match="being written by another run"):
      fake.main(folder)
    assert fake.calls == 0
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)
  # The holder ended without removing its lock file (as after SIGKILL): the file alone is no lock.
  assert (folder / _folder.LOCK).exists()
  Fake(2).main(folder)
  assert snapshot(folder) == new


@pytest.mark.parametrize(
  ("make", "out", "expected"),
  [
    (lambda tmp: (tmp / "file").write_text("x"), "file", "is a file, not a folder"),
    (lambda tmp: (tmp / "file").write_text("x"), "file/sub", "cannot be created (Not a directory)"),
  ],
)
def test_a_bad_out_path_is_refused_before_the_run(tmp_path, make, out, expected):
  make(tmp_path)
  fake = Fake(1)
  with pytest.raises(SystemExit, match=re.escape(expected)) as error:
    fake.main(tmp_path / out)
  assert fake.calls == 0 and str(tmp_path / out) in str(error.value.code)


def test_another_experiments_folder_is_refused(outputs):
  folder, old, _, _ = outputs
  payload = json.loads(old["results.json"])
  (folder / "results.json").write_text(json.dumps({**payload, "experiment": "other"}))
  before = snapshot(folder)
  fake = Fake(2)
  with pytest.raises(SystemExit, match="holds the outputs of experiment 'other'"):
    fake.main(folder)
  assert fake.calls == 0 and snapshot(folder) == before


def test_a_failing_plot_keeps_the_old_outputs_and_saves_the_results(outputs, capsys):
  folder, old, _, reset = outputs
  reset()
  fake = Fake(2)
  fake.plot = lambda results, path: 1 / 0
  with pytest.raises(ZeroDivisionError) as error:
    fake.main(folder)
  assert snapshot(folder) == old
  note = error.value.__notes__[0]
  assert "no output was written" in note and "| 2 |" in capsys.readouterr().out
  rescued = Path(note.split("The results are saved in ")[1].rstrip("."))
  assert json.loads(rescued.read_text())["results"]["value"] == 2
