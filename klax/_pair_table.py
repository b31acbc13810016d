"""The table of every distribution pair with a closed-form KL, generated from the registry.

`python -m klax._pair_table` prints it as Markdown (docs/reference/kl_pairs.md is its output,
checked by tests/test_pair_table.py). A row is a pair registered with TFP's KL registry, by TFP,
distrax or klax, or one of klax's overrides, whose classes are public names of `distrax` or
`tfp.distributions`. TFP resolves pairs along class hierarchies, so a subclass (tfd.Exponential
of tfd.Gamma, say) also meets every pair of its base classes.
"""

from __future__ import annotations

import distrax
from tensorflow_probability.substrates import jax as tfp
from tensorflow_probability.substrates.jax.distributions import kullback_leibler

import klax  # noqa: F401  (registers klax's pairs)
from klax import _pairs_support
from klax import _registrations

tfd = tfp.distributions


def _public_name(cls) -> str | None:
  for prefix, module in (("distrax", distrax), ("tfd", tfd)):
    if getattr(module, cls.__name__, None) is cls:
      return f"{prefix}.{cls.__name__}"
  return None


def _source(rule) -> str:
  module = getattr(rule, "__module__", "") or ""
  if rule is _pairs_support.kl_infinite:
    return "klax: +inf (p's support not inside q's)"
  if module.startswith("klax"):
    return "klax"
  return "distrax" if module.startswith("distrax") else "TFP"


def supported_pairs() -> list[tuple[str, str, str]]:
  """(p's class, q's class, whose form klax uses), sorted, for every public registered pair."""
  rows = {}
  for (type_p, type_q), rule in kullback_leibler._DIVERGENCES.items():
    rows[type_p, type_q] = _source(rule)
  for pair in _registrations.OVERRIDES:
    rows[pair] = "klax"
  named = []
  for (type_p, type_q), source in rows.items():
    name_p, name_q = _public_name(type_p), _public_name(type_q)
    if name_p and name_q:
      named.append((name_p, name_q, source))
  return sorted(named)


def markdown_table() -> str:
  """The Markdown page: a heading, a sentence, and one row per pair."""
  lines = [
    "# Closed-form KL pairs",
    "",
    "Every pair `klax.kl_divergence(p, q)` computes in closed form, generated from the KL",
    "registry by `python -m klax._pair_table` (tests check it is current). 'klax' marks klax's",
    "own form, registered with TFP or taking precedence over the library's. Subclasses meet",
    "their base classes' pairs (tfd.Exponential is a tfd.Gamma).",
    "",
    "| p | q | form |",
    "| --- | --- | --- |",
  ]
  lines += [f"| `{p}` | `{q}` | {source} |" for p, q, source in supported_pairs()]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(markdown_table(), end="")
