"""What an experiment claims, how its results check each claim, and whether it held.

Each experiment's `claims(results) -> list[Claim]` states its claims in words, with the check
made on the run's own numbers; the command line writes them into `results.json` and under the
key table in `table.md` (so into `report.md`), ending with a one-sentence conclusion.
"""

from __future__ import annotations

from typing import NamedTuple


class Claim(NamedTuple):
  """A claim of an experiment, the check that decides it (with the numbers), and its verdict."""

  statement: str
  check: str
  held: bool


def section(claims: list[Claim]) -> str:
  """The claims as a markdown table, and a sentence saying how many held."""
  lines = ["**Claims**", "", "| claim | check | held |", "|---|---|---|"]
  cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (a | inside a cell ends it)
  lines += [
    f"| {cell(c.statement)} | {cell(c.check)} | {'yes' if c.held else '**no**'} |" for c in claims
  ]
  failed = [c.statement for c in claims if not c.held]
  if not failed:
    conclusion = f"All {len(claims)} claims held on this run."
  else:
    conclusion = (
      f"{len(claims) - len(failed)} of {len(claims)} claims held; not held: " + "; ".join(failed)
    )
  return "\n".join([*lines, "", conclusion])
