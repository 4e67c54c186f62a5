"""A progress line for long extractions: clips done, clips/s and time left, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
  seconds = int(max(0, seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
  """``[#####.....] 120/400 clips  31.2 clips/s  0:09 left  video 2/5 name.mp4``.

  On a terminal the line is redrawn in place (at most 4 times a second); otherwise (a log
  file) a line is written every ``every`` seconds.

  Args:
    total: clips expected in all (an estimate from the containers' frame counts).
    stream: where to write (stderr).
    every: seconds between lines when ``stream`` is not a terminal.
  """

  def __init__(self, total: int, stream: TextIO | None = None, every: float = 30.0):
    self.total = max(1, total)
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.every = 0.25 if self.tty else every
    self.done = 0
    self.label = ""
    self._start = time.monotonic()
    self._last = self._start
    self._drawn = False

  def line(self) -> str:
    elapsed = time.monotonic() - self._start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    total = max(self.total, self.done)
    left = (total - self.done) / rate if rate > 0 else float("nan")
    filled = int(20 * self.done / total)
    eta = _clock(left) if left == left else "?"
    return (f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{total} clips  "
            f"{rate:.1f} clips/s  {eta} left  {self.label}")

  def update(self, clips: int = 0, label: str | None = None) -> None:
    """Counts ``clips`` more clips done (and names what is being worked on)."""
    self.done += clips
    if label is not None:
      self.label = label
    now = time.monotonic()
    if now - self._last >= self.every:
      self._last = now
      self._write()

  def _write(self) -> None:
    if self.tty:
      self.stream.write("\r\033[K" + self.line())
      self._drawn = True
    else:
      self.stream.write(self.line() + "\n")
    self.stream.flush()

  def close(self) -> None:
    """Ends the line on a terminal."""
    if self.tty and self._drawn:
      self.stream.write("\r\033[K" + self.line() + "\n")
      self.stream.flush()

  @property
  def rate(self) -> float:
    """Clips per second so far."""
    elapsed = time.monotonic() - self._start
    return self.done / elapsed if elapsed > 0 else 0.0
