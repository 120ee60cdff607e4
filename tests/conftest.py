import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import helpers.py and reference.py by name

from helpers import make_batch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def batch():
    return make_batch


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One tiny-base cache per test module: the warm-up is built once, not once per test."""
    return str(tmp_path_factory.mktemp("cache"))
