"""The generated table of closed-form pairs is current, and every row is a pair klax computes."""

from pathlib import Path

import distrax
from tensorflow_probability.substrates import jax as tfp
from tensorflow_probability.substrates.jax.distributions import kullback_leibler

import klax
from klax import _pair_table

tfd = tfp.distributions
PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "kl_pairs.md"


def test_page_is_the_generated_table():
  assert PAGE.read_text() == _pair_table.markdown_table(), (
    "regenerate with `python -m klax._pair_table > docs/reference/kl_pairs.md`"
  )


def test_every_row_resolves_to_a_rule():
  modules = {"distrax": distrax, "tfd": tfd}
  rows = _pair_table.supported_pairs()
  assert len(rows) > 150
  for name_p, name_q, _ in rows:
    type_p, type_q = (getattr(modules[n.split(".")[0]], n.split(".")[1]) for n in (name_p, name_q))
    assert kullback_leibler._registered_kl(type_p, type_q) is not None or (
      (type_p, type_q) in klax._registrations.OVERRIDES
    ), (name_p, name_q)
  names = {(p, q) for p, q, _ in rows}
  for pair in [
    ("tfd.Chi2", "distrax.Gamma"),
    ("tfd.Uniform", "tfd.Pareto"),
    ("tfd.Normal", "tfd.Uniform"),
  ]:
    assert pair in names, pair
