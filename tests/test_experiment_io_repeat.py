"""`--repeat`: NaN and ±inf compare exactly; a damaged record is refused, with one message naming
the file and what is wrong, before anything runs."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from test_experiment_io import Fake
from test_experiment_io import _deterministic  # noqa: F401  (the autouse fixture)

from experiments import _repeat

ROOT = Path(__file__).resolve().parents[1]

LEAVES = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(-(2**60), 2**60),
  st.floats(allow_nan=True, allow_infinity=True),
  st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1.0, 1]),
  st.text(max_size=3),
)
TREES = st.recursive(
  LEAVES,
  lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abc", max_size=2), inner),
  max_leaves=12,
)


def leaves(tree, path="results"):
  """Path -> JSON text of every leaf: the independent reference for "identical"."""
  if isinstance(tree, dict):
    return {k: v for key in tree for k, v in leaves(tree[key], f"{path}.{key}").items()}
  if isinstance(tree, list):
    return {k: v for i, item in enumerate(tree) for k, v in leaves(item, f"{path}[{i}]").items()}
  return {path: json.dumps(tree)}


def replace_leaves(tree, new, chosen):
  """`tree` with the leaves whose index is in `chosen` replaced by `new` (in order)."""
  counter = iter(range(10**6))

  def walk(node):
    if isinstance(node, dict):
      return {key: walk(value) for key, value in node.items()}
    if isinstance(node, list):
      return [walk(value) for value in node]
    return new.pop(0) if next(counter) in chosen and new else node

  return walk(tree)


@given(TREES, st.lists(LEAVES, max_size=4), st.sets(st.integers(0, 11), max_size=4))
def test_differences_are_exactly_the_leaves_whose_json_differs(tree, new, chosen):
  recorded = json.loads(json.dumps(tree))  # What results.json holds.
  assert _repeat.differences(recorded, json.loads(json.dumps(tree))) == []  # NaN repeats.
  repeated = replace_leaves(recorded, list(new), chosen)
  expected = {path for path, text in leaves(recorded).items() if leaves(repeated)[path] != text}
  found = _repeat.differences(recorded, repeated)
  assert {line.split(": ")[0] for line in found} == expected and len(found) == len(expected)


def test_a_run_with_nan_repeats_and_a_changed_special_value_does_not(tmp_path, capsys):
  Fake(2).main(tmp_path / "first")
  recorded = tmp_path / "first" / "results.json"
  assert "NaN" in recorded.read_text()
  Fake(2).main(tmp_path / "again", "--repeat", str(recorded))
  assert "reproduced: every recorded number is identical" in capsys.readouterr().out
  payload = json.loads(recorded.read_text())
  for value in (0.0, math.inf, -math.inf):
    payload["results"]["nan"] = value
    recorded.write_text(json.dumps(payload))
    with pytest.raises(SystemExit, match=r"not reproduced: 1 value\(s\) differ:\n  results.nan: "):
      Fake(2).main(tmp_path / "third", "--repeat", str(recorded))


def test_the_committed_gradient_estimators_record_is_repeatable():
  """Its NaNs (the diverged score fit's variances) compare equal; its config fits the script."""
  from experiments import gradient_estimators

  path = ROOT / "docs" / "experiments" / "gradient_estimators" / "results.json"
  recorded = _repeat.recorded_run(
    path, "gradient_estimators", gradient_estimators.SEED, gradient_estimators.Config
  )
  assert "NaN" in path.read_text()
  assert _repeat.differences(recorded["results"], json.loads(path.read_text())["results"]) == []


def _record(tmp_path):
  Fake(2).main(tmp_path / "first")
  return tmp_path / "first" / "results.json"


def _edit(change):
  def edit(path):
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))

  return edit


DAMAGES = {
  "missing": (lambda p: p.unlink(), "cannot be read (No such file or directory)"),
  "folder": (lambda p: (p.unlink(), p.mkdir()), "cannot be read (Is a directory)"),
  "binary": (lambda p: p.write_bytes(b"\xff\xfe{"), "is not UTF-8 text (byte 0)"),
  "truncated": (lambda p: p.write_text(p.read_text()[:40]), "is not valid JSON ("),
  "a list": (lambda p: p.write_text("[1, 2]"), "holds a JSON list, not a results.json object"),
  "no results": (_edit(lambda d: d.pop("results")), 'has no "results" entry'),
  "results a list": (
    _edit(lambda d: d.update(results=[1])),
    '"results" that is a list, not a dict',
  ),
  "no config": (_edit(lambda d: d.pop("config")), 'has no "config" entry'),
  "no seed": (_edit(lambda d: d.pop("key_seed")), 'has no "key_seed" entry'),
  "other seed": (
    _edit(lambda d: d.update(key_seed=8)),
    "was run with seed 8; this script's SEED is 7",
  ),
  "other experiment": (
    _edit(lambda d: d.update(experiment="x")),
    "records experiment 'x', not 'fake'",
  ),
  "unknown field": (_edit(lambda d: d["config"].update(extra=1)), "field(s) ['extra'] that this"),
  "missing field": (
    _edit(lambda d: d["config"].pop("scale")),
    "its config lacks field(s) ['scale']",
  ),
  "wrong type": (
    _edit(lambda d: d["config"].update(size="3")),
    "config \"size\" is '3', not an int",
  ),
  "bool for int": (
    _edit(lambda d: d["config"].update(size=True)),
    'config "size" is True, not an int',
  ),
  "not a list": (_edit(lambda d: d["config"].update(names="ab")), "is 'ab', not a list"),
  "list of ints": (
    _edit(lambda d: d["config"].update(names=[1])),
    "is [1], not a list whose items are each a string",
  ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_is_refused_before_the_run(tmp_path, damage):
  path = _record(tmp_path)
  change, expected = DAMAGES[damage]
  change(path)
  fake = Fake(2)
  with pytest.raises(SystemExit) as error:
    fake.main(tmp_path / "again", "--repeat", str(path))
  message = str(error.value.code)
  assert message.startswith(f"--repeat {path}: ") and message.endswith("; nothing was run.")
  assert expected in message and fake.calls == 0 and not (tmp_path / "again").exists()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_corruption_of_a_record_is_refused_or_repeats(tmp_path_factory, data):
  """Bytes cut off or changed anywhere: a clear refusal before the run, or a valid record."""
  tmp_path = tmp_path_factory.mktemp("corrupt")
  path = _record(tmp_path)
  text = path.read_bytes()
  # Positions as fractions of the length, which varies with the temporary folder's name.
  scale = 10**6
  cut = data.draw(st.integers(0, scale)) * len(text) // scale
  changes = data.draw(
    st.lists(st.tuples(st.integers(0, scale - 1), st.integers(0, 255)), max_size=3)
  )
  damaged = bytearray(text[:cut])
  for where, byte in changes:
    if where * len(text) // scale < len(damaged):
      damaged[where * len(text) // scale] = byte
  path.write_bytes(bytes(damaged))
  fake = Fake(2)
  try:
    fake.main(tmp_path / "again", "--repeat", str(path))
  except SystemExit as error:
    message = str(error.code)
    refused = message.startswith(f"--repeat {path}: ") and fake.calls == 0
    assert refused or (message.startswith("not reproduced") and fake.calls == 1), message
  else:
    assert fake.calls == 1
