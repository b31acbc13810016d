"""The public API: everything in __all__ exists, and every public function documents its
equation, arguments and return value and has an example that the doctests run."""

import inspect

import pytest

import klax


def _public_functions():
  functions = {name: getattr(klax, name) for name in klax.__all__}
  functions |= {f"families.{n}": getattr(klax.families, n) for n in dir(klax.families)}
  return {
    name: f
    for name, f in functions.items()
    if inspect.isfunction(f)
    and not name.rsplit(".", 1)[-1].startswith("_")
    and f.__module__.startswith("klax")
  }


FUNCTIONS = _public_functions()


def test_all_names_exist():
  missing = [name for name in klax.__all__ if not hasattr(klax, name)]
  assert not missing
  assert len(FUNCTIONS) > 35


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_docstring_has_arguments_returns_and_an_example(name):
  doc = inspect.getdoc(FUNCTIONS[name]) or ""
  if inspect.signature(FUNCTIONS[name]).parameters:
    assert "Args:" in doc, f"{name} does not document its arguments"
  assert "Returns:" in doc, f"{name} does not document its return value"
  assert ">>>" in doc, f"{name} has no example"
  summary = doc.split("Args:")[0].split("Returns:")[0]
  assert any(symbol in summary for symbol in "=≤≥∝"), f"{name} states no equation"
