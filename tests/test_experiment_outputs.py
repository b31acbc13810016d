"""Experiment outputs are written atomically: an interrupted run never leaves half a results.json."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import _io  # noqa: E402


def test_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "results.json"
  _io.write_json_atomic(path, {"answer": 1})
  with pytest.raises(TypeError):
    _io.write_json_atomic(path, {"answer": 2, "bad": object()})  # Fails halfway through dumping.
  assert json.loads(path.read_text()) == {"answer": 1}
  assert list(tmp_path.iterdir()) == [path]


def test_results_file_gets_the_usual_permissions(tmp_path):
  path, plain = tmp_path / "results.json", tmp_path / "plain.json"
  _io.write_json_atomic(path, {"answer": 1})
  plain.write_text("{}")  # What open() gives under the current umask.
  assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_interrupted_run_leaves_earlier_results_intact(tmp_path):
  previous = {"experiment": "earlier run"}
  (tmp_path / "results.json").write_text(json.dumps(previous))
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  script = str(ROOT / "experiments" / "mode_seeking_phase.py")
  # Test runners (pytest-xdist workers) may ignore SIGINT, and children inherit that: restore the
  # default so that the child's Python turns Ctrl-C into KeyboardInterrupt, as in a terminal.
  process = subprocess.Popen(
    [sys.executable, script, "--out", str(tmp_path)],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  time.sleep(8)  # Past the imports, inside the (full-size, minutes-long) run.
  assert process.poll() is None, "the run must still be going when it is interrupted"
  process.send_signal(signal.SIGINT)  # Ctrl-C.
  assert process.wait(timeout=120) != 0
  assert json.loads((tmp_path / "results.json").read_text()) == previous
  assert not list(tmp_path.glob("*.tmp"))
