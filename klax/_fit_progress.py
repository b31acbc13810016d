"""A fit's progress display: one object per call, moved by host callbacks from compiled code.

A `Progress` is made by each `fit`/`fit_batch` call that asks for one and is passed to its
compiled program as a static argument, so its `jax.debug.callback`s reach this object only (no
module state; two fits never share a display). It opens its display at the first report, not at
trace time, so it moves when the fit runs inside `jax.jit` too, and opens again when a compiled
program that contains it runs again. With tqdm installed the display is a tqdm bar; without it,
a line of text on stderr rewritten in place (tqdm is not a core dependency).
"""

from __future__ import annotations

import sys

import numpy as np


def _tqdm():
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return None
  return tqdm


class _TextBar:
  """A one-line stand-in for tqdm: `description: n/total steps, loss x` on stderr."""

  def __init__(self, total: int, desc: str):
    self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
    self._write()

  def _write(self, end: str = "") -> None:
    sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} steps{self.postfix}{end}")
    sys.stderr.flush()

  def update(self, count: int) -> None:
    self.n += count
    self._write()

  def set_postfix(self, loss: str) -> None:
    self.postfix = f", loss {loss}"

  def close(self) -> None:
    self._write("\n")


class Progress:
  """Counts a fit's steps towards `total` and shows them; `report` is the host callback.

  Each report gives the steps done in the current pass (a chunk or a group of members runs its
  steps from 0 again): a count below the last one starts a new pass and adds to the display.
  """

  def __init__(self, total: int, description: str):
    self.total, self.description = total, description
    self._bar, self._last = None, 0

  def _open(self):
    if self._bar is None:
      tqdm = _tqdm()
      make = (
        _TextBar if tqdm is None else lambda total, desc: tqdm(total=total, desc=desc, unit="step")
      )
      self._bar, self._last = make(self.total, self.description), 0
    return self._bar

  def report(self, steps_done, losses=None) -> None:
    """Adds the steps done since the last report (a host callback; `losses` may be NaN)."""
    bar, steps = self._open(), int(steps_done)
    done = steps - self._last if steps >= self._last else steps
    self._last = steps
    bar.update(max(0, min(done, self.total - bar.n)))
    if losses is not None and np.size(losses) and not np.all(np.isnan(losses)):
      bar.set_postfix(loss=f"{float(np.nanmean(np.asarray(losses))):.4g}")
    if bar.n >= self.total:
      self.close()

  def advance(self, count: int) -> None:
    """Adds `count` steps (from the host, between compiled calls)."""
    bar = self._open()
    bar.update(max(0, min(count, self.total - bar.n)))

  def close(self) -> None:
    """Completes and closes the display (if open); a later report opens a new one."""
    if self._bar is not None:
      self._bar.update(self._bar.total - self._bar.n)
      self._bar.close()
      self._bar = None


def start(progress, total: int, description: str) -> Progress | None:
  """A new display for this call if `progress`, else None."""
  if not isinstance(progress, bool):
    raise TypeError(f"`progress` must be a bool, got {type(progress).__name__}.")
  return Progress(total, description) if progress else None
