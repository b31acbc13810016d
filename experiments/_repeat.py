"""`--repeat RESULTS_JSON`: check a recorded run before running it again, then compare every number.

The record is checked before anything runs: a file that cannot be read, is not JSON, is not this
experiment's, was run with another seed, has no "results", or whose "config" does not match this
script's Config (unknown or missing fields, wrong types) stops with one message naming the file
and what is wrong. Numbers compare as identical JSON values: NaN equals NaN, ±inf equals itself
only, -0.0 differs from 0.0, 1 (an int) differs from 1.0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from experiments import _io


def recorded_run(path: Path, name: str, seed, config_class) -> dict:
  """The results.json at `path`, checked to be a complete record of experiment `name`."""

  def fail(what: str):
    raise SystemExit(f"--repeat {path}: {what}; nothing was run.")

  try:
    text = Path(path).read_text(encoding="utf-8")
  except UnicodeDecodeError as error:
    fail(f"is not UTF-8 text (byte {error.start})")
  except OSError as error:
    fail(f"cannot be read ({error.strerror or error})")
  try:
    recorded = json.loads(text)
  except json.JSONDecodeError as error:
    fail(f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})")
  except RecursionError:
    fail("is not a results.json (JSON nested too deeply)")
  if not isinstance(recorded, dict):
    fail(f"holds a JSON {type(recorded).__name__}, not a results.json object")
  for key, kind in (("experiment", str), ("key_seed", object), ("config", dict), ("results", dict)):
    if key not in recorded:
      fail(f'has no "{key}" entry')
    if not isinstance(recorded[key], kind):
      fail(f'has a "{key}" that is a {type(recorded[key]).__name__}, not a {kind.__name__}')
  if recorded["experiment"] != name:
    fail(f"records experiment {recorded['experiment']!r}, not {name!r}")
  if recorded["key_seed"] != seed or isinstance(recorded["key_seed"], bool):
    fail(f"was run with seed {recorded['key_seed']!r}; this script's SEED is {seed}")
  problem = _config_problem(config_class, recorded["config"])
  if problem:
    fail(problem)
  return recorded


def _config_problem(config_class, values: dict) -> str | None:
  """What makes `values` (a recorded config) unusable for `config_class`, or None."""
  defaults = config_class()
  fields = [field.name for field in dataclasses.fields(config_class) if field.name != "out"]
  unknown = sorted(set(values) - set(fields) - {"out"})
  if unknown:
    return f"its config has field(s) {unknown} that this script's Config does not"
  missing = [field for field in fields if field not in values]
  if missing:
    return f"its config lacks field(s) {missing}"
  for field in fields:
    expected = _type_problem(getattr(defaults, field), values[field])
    if expected:
      return f'its config "{field}" is {values[field]!r}, not {expected}'
  try:
    config_from_dict(config_class, values, out=defaults.out)
  except (TypeError, ValueError) as error:
    return f"its config is refused by this script's Config ({error})"
  return None


def _type_problem(default, value) -> str | None:
  """The kind of JSON value `default`'s field needs ("an int"), if `value` is not one; else None."""
  if isinstance(default, tuple):
    if not isinstance(value, list):
      return "a list"
    inner = [_type_problem(default[0], item) for item in value] if default else []
    return next((f"a list whose items are each {kind}" for kind in inner if kind), None)
  kinds = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
  for kind, needed in kinds.items():
    if isinstance(default, kind):
      accepted = (int, float) if kind is float else (kind,)
      ok = isinstance(value, accepted) and (kind is bool or not isinstance(value, bool))
      return None if ok else needed
  return None


def config_from_dict(config_class, values: dict, out: str):
  """The dataclass config recorded in results.json (JSON lists back to tuples), writing to `out`."""
  defaults = config_class()
  fields = {}
  for field in dataclasses.fields(config_class):
    if field.name in values:
      value = values[field.name]
      fields[field.name] = (
        tuple(value) if isinstance(getattr(defaults, field.name), tuple) else value
      )
  return config_class(**{**fields, "out": out})


def same(recorded, repeated) -> bool:
  """Two JSON leaves are the same value: NaN is NaN, ±0.0 and int/float/bool differ."""
  if isinstance(recorded, float) and isinstance(repeated, float):
    if math.isnan(recorded) or math.isnan(repeated):
      return math.isnan(recorded) and math.isnan(repeated)
    return recorded == repeated and math.copysign(1.0, recorded) == math.copysign(1.0, repeated)
  return type(recorded) is type(repeated) and recorded == repeated


_MISSING = object()  # A key that one tree has and the other lacks.


def differences(recorded, repeated, path: str = "results") -> list[str]:
  """Paths where two JSON trees differ (wall times, which never repeat, are ignored)."""
  if isinstance(recorded, dict) and isinstance(repeated, dict):
    keys = (set(recorded) | set(repeated)) - {"wall_time_s"}
    return [
      d
      for k in sorted(keys)
      for d in differences(recorded.get(k, _MISSING), repeated.get(k, _MISSING), f"{path}.{k}")
    ]
  if isinstance(recorded, list) and isinstance(repeated, list) and len(recorded) == len(repeated):
    return [
      d
      for i, (a, b) in enumerate(zip(recorded, repeated, strict=True))
      for d in differences(a, b, f"{path}[{i}]")
    ]
  if same(recorded, repeated):
    return []
  return [f"{path}: {_show(recorded)} then {_show(repeated)}"]


def _show(value) -> str:
  if value is _MISSING:
    return "(missing)"
  text = repr(value)
  return text if len(text) <= 80 else f"{text[:77]}..."


def check_reproduced(recorded: dict, results: dict) -> None:
  """Compares a repeated run's results with the recorded ones; exits non-zero if any differ."""
  repeated = json.loads(_io.json_bytes(results))
  found = differences(recorded["results"], repeated)
  now = _io.provenance()
  if recorded.get("versions") != now["versions"]:
    then = recorded.get("versions")
    print(f"note: versions differ from the recorded run: {then} vs {now['versions']}")
  if found:
    listing = "\n  ".join(found[:20])
    raise SystemExit(f"not reproduced: {len(found)} value(s) differ:\n  {listing}")
  print("reproduced: every recorded number is identical")
