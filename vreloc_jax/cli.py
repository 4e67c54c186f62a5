"""What every command line of the project does with bad input: one line, exit status 1.

  vreloc_jax.evaluate: error: no checkpoint for step 7 in W/checkpoints; saved steps: [1]

A program runs its ``main`` through `run` (absl's ``app.run`` with a flag parser of
its own) and wraps its work in `one_line_errors`. Then a bad flag value, an unknown
flag, a missing required flag, a usage error (`app.UsageError`) and an error of the
given types (`ValueError` by default: bad input, named by the code that found it)
all end in one line on stderr, ``<program>: error: <what>``, and exit status 1,
never in a traceback or absl's two-line "FATAL Flags parsing error" with help
hints. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, Sequence

from absl import app
from absl import flags

# "ValueError: …" at the end of a traceback quoted in a message.
_EXCEPTION_PREFIX = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")


def one_line(message: object) -> str:
  """``message`` on one line: its lines joined; a traceback quoted in it becomes its last line.

  (ml_collections quotes the whole traceback of a config file that raised.)
  """
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  for i, line in enumerate(lines):
    if line.startswith("Traceback (most recent call last)"):
      lines = lines[:i] + [_EXCEPTION_PREFIX.sub("", lines[-1])]
      break
  return " ".join(lines) or type(message).__name__


def error(program: str, message: object) -> SystemExit:
  """The exit of ``program`` with ``message``: ``<program>: error: <message>``, status 1."""
  return SystemExit(f"{program}: error: {one_line(message)}")


@contextlib.contextmanager
def one_line_errors(program: str,
                    types: tuple[type[BaseException], ...] = (ValueError,)) -> Iterator[None]:
  """Turns an exception of ``types`` raised inside into `error` (no traceback)."""
  try:
    yield
  except types as e:
    raise error(program, e) from None


def flags_parser(program: str) -> Callable[[list[str]], list[str]]:
  """absl's flag parsing, with bad flags ending in one line (`error`)."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # A bad value, a missing required flag, an unknown flag.
      raise error(program, e) from None

  return parse


def run(main: Callable[[Sequence[str]], None], program: str,
        parser: Callable[[list[str]], list[str]] | None = None) -> None:
  """``app.run(main)``: bad flags and `app.UsageError` end in one line (`error`).

  Args:
    main: the program's main function.
    program: its name in messages (``vreloc_jax.evaluate``).
    parser: the flag parser; by default `flags_parser`.
  """

  def checked(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except app.UsageError as e:  # absl would print the whole usage text first.
      raise error(program, e) from None

  app.run(checked, flags_parser=parser or flags_parser(program))
