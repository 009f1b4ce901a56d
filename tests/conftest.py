import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def ct_values():
    """A small CT-like volume in HU: air around a water body with a bone insert, integer-valued."""
    i, j, k = np.meshgrid(np.arange(20), np.arange(16), np.arange(9), indexing="ij")
    body = ((i - 10) ** 2 + (j - 8) ** 2) < 36
    values = np.where(body, 40.0, -1000.0)
    values[(i - 12) ** 2 + (j - 8) ** 2 < 4] = 700.0
    values += np.random.default_rng(0).integers(-20, 21, values.shape)
    return values.astype(np.float32)
