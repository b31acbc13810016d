"""Shared test set-up: hypothesis profiles sized for CI's 2 cores; a runner on N CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(config, items):
  """Tests that start a fresh interpreter through `run_on_cpu_devices` are `slow`."""
  for item in items:
    if "run_on_cpu_devices" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)


@pytest.fixture
def run_on_cpu_devices():
  """`run(script, count, *args)`: runs `python -c script *args` with `count` host CPU devices
  (a fresh process: the device count is fixed when JAX starts) and returns the JSON object its
  last line of output prints."""

  def run(script: str, count: int, *args: str) -> dict:
    env = {
      **os.environ,
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
      "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
      [sys.executable, "-c", script, *args],
      capture_output=True,
      text=True,
      env=env,
      check=True,
      timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])

  return run
