"""The entropy suite of `test_differential_entropy` in float64: 1e-10 relative.

Every row of its entropy table, on the same strategies, with the parameters cast to float64 and
jax_enable_x64 on (klax's Stirling forms switch to their float64 series and switch points).
"""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from test_differential_entropy import ENTROPY
from test_differential_entropy import check_entropy

FLOAT64_RTOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def enable_x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", list(ENTROPY))
def test_entropy_matches_mpmath_in_float64(name):
  @settings(max_examples=4)
  @given(ENTROPY[name][0])
  def check(theta):
    check_entropy(name, theta, dtype=np.float64, rtol=FLOAT64_RTOL)

  check()
