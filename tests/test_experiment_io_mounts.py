"""Experiment outputs on real file systems: small and read-only tmpfs mounts (skipped where this
process may not mount), where the folder keeps its old outputs, byte for byte, and says why; real
matplotlib figures."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_experiment_io import Fake
from test_experiment_io import _deterministic  # noqa: F401  (the autouse fixture)
from test_experiment_io import snapshot

from experiments import _cli


@pytest.fixture
def tmpfs(tmp_path):
  """`mount(size) -> folder`: a fresh tmpfs of `size` bytes; `read_only(folder)` remounts it."""
  mounted = []

  def mount(size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
      pytest.skip("mounting a tmpfs needs root and mount(8)")
    folder = tmp_path / f"disk{len(mounted)}"
    folder.mkdir()
    done = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode:
      pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    mounted.append(folder)
    return folder

  def read_only(folder):
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

  yield mount, read_only
  for folder in mounted:
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_disk_that_fills_during_the_run_keeps_the_old_outputs(tmpfs):
  out = tmpfs[0](64 * 1024) / "out"
  Fake(1).main(out)
  old = snapshot(out)
  big = Fake(2, rows=20_000)  # results.json of about 200 kB: more than the disk holds.
  with pytest.raises(SystemExit) as error:
    big.main(out)
  message = str(error.value.code)
  assert big.calls == 1 and "could not be written to" in message and str(out) in message
  assert os.strerror(28) in message  # ENOSPC: No space left on device.
  assert snapshot(out) == old
  rescued = Path(message.split("The results are saved in ")[1].rstrip("."))
  assert json.loads(rescued.read_text())["results"]["rows"] == [2] * 20_000


def test_a_full_disk_is_refused_before_the_run(tmpfs):
  disk = tmpfs[0](64 * 1024)
  Fake(1).main(disk / "out")
  filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
  with pytest.raises(OSError, match="No space left"):
    while True:
      os.write(filler, bytes(1024))
  os.close(filler)
  before = {"out": snapshot(disk / "out"), "disk": sorted(p.name for p in disk.iterdir())}
  fake = Fake(2)
  with pytest.raises(SystemExit, match="cannot be written \\(No space left on device\\)"):
    fake.main(disk / "out")
  assert fake.calls == 0
  assert before == {"out": snapshot(disk / "out"), "disk": sorted(p.name for p in disk.iterdir())}


def test_a_read_only_file_system_is_refused_before_the_run(tmpfs):
  mount, read_only = tmpfs
  disk = mount(64 * 1024)
  Fake(1).main(disk / "out")
  old = snapshot(disk / "out")
  read_only(disk)
  for out, what in ((disk / "out", "cannot be written"), (disk / "new", "cannot be created")):
    fake = Fake(2)
    with pytest.raises(SystemExit) as error:
      fake.main(out)
    message = str(error.value.code)
    assert fake.calls == 0 and f"{out} {what} (Read-only file system)" in message
  assert snapshot(disk / "out") == old and not (disk / "new").exists()


def test_real_figures_are_written_whole_with_the_usual_permissions(tmp_path):
  plt = _cli.pyplot()

  def plot(results, path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, results["value"]])
    _cli.save(fig, path)

  fake = Fake(2)
  fake.plot = plot
  fake.main(tmp_path / "out")
  figure = tmp_path / "out" / "tiny.png"
  assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.read_bytes()[-8:-4] == b"IEND"
  (tmp_path / "plain").write_text("")
  for name in ("tiny.png", "results.json", "table.md"):
    mode = (tmp_path / "out" / name).stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777, name
