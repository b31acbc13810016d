"""The differential suite of `test_differential_closed_form` in float64: 1e-10 relative.

Every row of its table (but the low-rank MVN pair, which factorises a formed covariance), on the
same strategies (values only: gradients, shapes and broadcasting are the float32 module's), with
the parameters cast to float64 and jax_enable_x64 on: the series
truncations and switch points of klax._series are sized per dtype, so float64 keeps 1e-10.
"""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from test_differential_closed_form import ROWS
from test_differential_closed_form import check_row

FLOAT64_RTOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", [name for name in ROWS if not name.startswith("low-rank")])
def test_matches_independent_reference_in_float64(name):
  @settings(max_examples=5)
  @given(ROWS[name][0])
  def check(pair):
    check_row(name, *pair, dtype=np.float64, rtol=FLOAT64_RTOL, full=False)

  check()
