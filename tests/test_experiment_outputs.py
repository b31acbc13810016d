"""Experiment outputs are written atomically: an interrupted run never leaves half a results.json;
--repeat reruns a recorded run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import _io

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_earlier_results_intact(tmp_path, signum):
  previous = {"experiment": "mode_seeking_phase", "results": "an earlier run's"}
  (tmp_path / "results.json").write_text(json.dumps(previous))
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  script = str(ROOT / "experiments" / "mode_seeking_phase.py")
  # Test runners (pytest-xdist workers) may ignore SIGINT, and children inherit that: restore the
  # default so that the child's Python turns Ctrl-C into KeyboardInterrupt, as in a terminal.
  process = subprocess.Popen(
    [sys.executable, script, "--out", str(tmp_path)],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  deadline = time.monotonic() + 120
  while not (tmp_path / ".klax.lock").exists() and time.monotonic() < deadline:
    time.sleep(0.05)  # The lock is taken after the imports, just before the run.
  time.sleep(0.5)  # Inside the (full-size, minute-long) run.
  assert process.poll() is None, "the run must still be going when it is interrupted"
  process.send_signal(signum)  # Ctrl-C, or `kill`.
  _, stderr = process.communicate(timeout=120)
  if signum == signal.SIGTERM:  # Cleanup ran: SIGTERM raised, exit status 128 + 15, no traceback.
    assert process.returncode == 143 and b"Traceback" not in stderr
  else:
    assert process.returncode != 0
  assert json.loads((tmp_path / "results.json").read_text()) == previous
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # No temporary or lock file.


def _experiment(args, cwd):
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "alpha_interpolation.py"), *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    timeout=600,
  )


@pytest.mark.slow
def test_a_run_repeats_from_its_results_json(tmp_path):
  first = _experiment(["--quick", "--out", str(tmp_path / "first")], tmp_path)
  assert first.returncode == 0, first.stderr
  recorded = tmp_path / "first" / "results.json"
  again = _experiment(["--repeat", str(recorded), "--out", str(tmp_path / "again")], tmp_path)
  assert again.returncode == 0, again.stderr
  assert "reproduced: every recorded number is identical" in again.stdout
  payload = json.loads(recorded.read_text())
  assert payload["config"] == json.loads((tmp_path / "again" / "results.json").read_text())[
    "config"
  ] | {"out": payload["config"]["out"]}
  # A recorded number that the run does not give back is reported, and the exit code says so.
  payload["results"]["rows"][0]["sigma"] += 1e-6
  recorded.write_text(json.dumps(payload))
  changed = _experiment(["--repeat", str(recorded), "--out", str(tmp_path / "third")], tmp_path)
  assert changed.returncode != 0
  assert "not reproduced: 1 value(s) differ" in changed.stderr
  assert "results.rows[0].sigma" in changed.stderr
