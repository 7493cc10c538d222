import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from pipeline.synthetic import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synth"), n_train=12, n_val=4, seed=3, min_size=64, max_size=96)
