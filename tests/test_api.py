"""The public API: everything in __all__ exists, and every public function has a runnable example."""

import inspect

import klax


def test_all_names_exist():
  missing = [name for name in klax.__all__ if not hasattr(klax, name)]
  assert not missing


def test_every_public_function_has_a_doctest_example():
  functions = [name for name in klax.__all__ if inspect.isfunction(getattr(klax, name))]
  assert len(functions) > 30
  without = [name for name in functions if ">>>" not in (inspect.getdoc(getattr(klax, name)) or "")]
  assert not without, f"public functions without an example: {without}"
