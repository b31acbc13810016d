"""`python -m experiments` (run_all): its folder checked and locked before any experiment runs; the
first failing experiment stops it without a report; an interrupted runner stops its experiment."""

import fcntl
import os
import signal
import subprocess

import pytest

from experiments import _folder
from experiments import run_all

SCRIPTS = {  # Stand-ins for experiment scripts: no JAX, a fraction of a second each.
  "ok": "import sys, pathlib; out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True); "
  "(out / 'table.md').write_text('| ok |')",
  "fail": "raise SystemExit(3)",
  "slow": "import sys, pathlib, time; pathlib.Path(sys.argv[2]).mkdir(parents=True); time.sleep(60)",
}


@pytest.fixture
def scripts(tmp_path, monkeypatch):
  root = tmp_path / "root"
  (root / "experiments").mkdir(parents=True)
  for name, source in SCRIPTS.items():
    (root / "experiments" / f"{name}.py").write_text(source)
  monkeypatch.setattr(run_all, "ROOT", root)
  monkeypatch.setattr(run_all, "EXPERIMENTS", tuple(SCRIPTS))
  return tmp_path / "out"


def test_the_report_is_written_only_when_every_experiment_succeeds(scripts):
  out = scripts
  assert run_all.main(["--out", str(out), "ok"]) == out / "report.md"
  report = (out / "report.md").read_bytes()
  assert b"## ok" in report and b"| ok |" in report
  assert sorted(p.name for p in out.iterdir()) == ["ok", "report.md"]  # No lock or temporary file.
  with pytest.raises(SystemExit, match=r"experiment fail failed \(exit status 3\); report.md not"):
    run_all.main(["--out", str(out / "again"), "ok", "fail"])
  assert sorted(p.name for p in (out / "again").iterdir()) == ["ok"]
  assert (out / "report.md").read_bytes() == report


def test_a_locked_or_bad_folder_is_refused_before_any_experiment(scripts):
  out = scripts
  out.mkdir()
  fd = os.open(out / _folder.LOCK, os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX)  # Another runner (a separate open file: flock excludes it).
  try:
    with pytest.raises(SystemExit, match="is being written by another run"):
      run_all.main(["--out", str(out), "ok"])
  finally:
    os.close(fd)
  assert not (out / "ok").exists()
  (out / "file").write_text("x")
  with pytest.raises(SystemExit, match="is a file, not a folder"):
    run_all.main(["--out", str(out / "file"), "ok"])


def test_an_interrupted_runner_stops_its_experiment(scripts, monkeypatch):
  started = []
  wait = subprocess.Popen.wait

  def interrupted_wait(self, timeout=None):
    if not started:
      started.append(self)
      raise KeyboardInterrupt  # Ctrl-C while the experiment runs.
    return wait(self, timeout)

  monkeypatch.setattr(subprocess.Popen, "wait", interrupted_wait)
  with pytest.raises(KeyboardInterrupt):
    run_all.main(["--out", str(scripts), "slow"])
  assert started[0].returncode == -signal.SIGTERM  # Stopped (so that it can clean up), not left.
  assert [p.name for p in scripts.iterdir()] in ([], ["slow"])  # No lock or temporary file.


def test_the_report_keeps_experiments_run_earlier_into_the_same_folder(scripts):
  out = scripts
  (out / "fail").mkdir(parents=True)  # An earlier run of `fail`, with its recorded wall time.
  (out / "fail" / "table.md").write_text("| earlier |")
  (out / "fail" / "results.json").write_text('{"wall_time_s": 12.5}')
  run_all.main(["--out", str(out), "ok"])
  report = (out / "report.md").read_text()
  assert report.index("## ok") < report.index("## fail")  # In the order of EXPERIMENTS.
  assert "| earlier |" in report and "Wall time: 12.5 s." in report
