"""The Python API's argument types: a value of the wrong type is named, not misreported."""
from __future__ import annotations

import re

import numpy as np
import pytest

from llmimg_jax.sample import restore_for_sampling


@pytest.mark.parametrize("step", ["2", 2.0, True])
def test_a_step_that_is_not_an_int_is_named_as_such(run, step):
  """step="2" (e.g. read from argparse or a file) was reported as 'No checkpoint for step 2 ...;
  available steps: [1, 2]', contradicting itself."""
  with pytest.raises(TypeError, match=re.escape(
      f"Checkpoint step {step!r} is a {type(step).__name__}, not an int; pass an int (available "
      "steps: [1, 2]), or None for the latest.")):
    restore_for_sampling(run.workdir, step=step)


def test_a_numpy_integer_step_restores(run):
  assert restore_for_sampling(run.workdir, step=np.int64(1)).step == 1
