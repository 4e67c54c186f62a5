"""Config arguments: each config file declares the arguments it takes (big_vision's parse_arg).

``--config=configs/weak.py:base,alpha=0.5,quick`` passes ``"base,alpha=0.5,quick"`` to
``get_config``, which parses it with `parse_arg` against its own declaration: an
argument it does not declare is refused, one given twice is refused, and the order
they come in never matters (the file applies them in an order of its own).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Arg:
  """One declared argument.

  Attributes:
    default: its value when not given; its type converts a given value (a bool
      argument is a flag: given alone, it is True).
    bare: its value when given without ``=value`` (None: a value is required).
    choices: the values it may take (empty: any).
    meta: how the expected-arguments message writes its value (``X``, ``SOURCE``).
  """

  default: Any
  bare: Any = None
  choices: tuple[Any, ...] = ()
  meta: str = "X"

  def usage(self, name: str) -> str:
    if isinstance(self.default, bool):
      return name
    value = "|".join(str(c) for c in self.choices if c != self.bare) or self.meta
    return f"{name}[={value}]" if self.bare is not None else f"{name}={value}"


def _convert(name: str, arg: Arg, text: str) -> Any:
  if isinstance(arg.default, bool):
    if text.lower() not in ("true", "false"):
      raise ValueError(f"config argument {name} is a flag: give it alone, or {name}=true|false")
    return text.lower() == "true"
  try:
    value = type(arg.default)(text) if arg.default is not None else text
  except ValueError:
    raise ValueError(f"config argument {name}={text!r}: not a {type(arg.default).__name__}"
                     ) from None
  if arg.choices and value not in arg.choices:
    raise ValueError(f"config argument {name}={text!r}: expected one of "
                     f"{', '.join(str(c) for c in arg.choices)}")
  return value


def parse_arg(arg: str | None, *, aliases: dict[str, tuple[str, Any]] | None = None,
              **spec: Any) -> ml_collections.ConfigDict:
  """Parses a config file's comma-separated argument string against its declaration.

  Args:
    arg: what followed the file name after ``:`` (None or "" for nothing).
    aliases: words that stand for an argument and its value
      (``{"base": ("variant", "base")}``).
    **spec: the declared arguments: an `Arg`, or a default value (``quick=False``).

  Returns:
    Every declared argument's value (given, else its default), by name.

  Raises:
    ValueError: an undeclared argument, a repeated one, or a bad value.
  """
  aliases = aliases or {}
  spec = {k: v if isinstance(v, Arg) else Arg(v) for k, v in spec.items()}
  values, given = {k: a.default for k, a in spec.items()}, {}
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    name, has_value, text = token.partition("=")
    if token in aliases:
      name, value = aliases[token]
    elif name in spec and has_value:
      value = _convert(name, spec[name], text)
    elif name in spec and (isinstance(spec[name].default, bool) or spec[name].bare is not None):
      value = True if isinstance(spec[name].default, bool) else spec[name].bare
    elif name in spec:
      raise ValueError(f"config argument {name} needs a value: {spec[name].usage(name)}")
    else:
      expected = list(aliases) + [a.usage(k) for k, a in spec.items()]
      raise ValueError(f"unknown config argument {token!r}; expected one of "
                       f"{', '.join(expected)}")
    if name in given:
      raise ValueError(f"config arguments {given[name]!r} and {token!r} both set {name}; "
                       "give one")
    given[name] = token
    values[name] = value
  return ml_collections.ConfigDict(values)
