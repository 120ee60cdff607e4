"""Tests of conspo.integrations.verl against verl's own code (CPU, pinned verl 0.9.1).

They run in their own environment, .venv-verl (``make test-verl``), because verl pins a
transformers older than the project's. In any other environment each module skips itself
(``pytest.importorskip`` at its top).
"""

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # verl_sim helpers


def pytest_configure(config):
    # verl's import-time notices about engines and backends that a CPU machine does not have
    for pattern in (
        r"ignore:.* engine is not available:UserWarning",
        r"ignore:Ray state API is no longer experimental:DeprecationWarning",
        r"ignore:Disabled critic as algorithm.adv_estimator:UserWarning",
    ):
        config.addinivalue_line("filterwarnings", pattern)


@pytest.fixture(scope="session", autouse=True)
def one_process_group():
    """verl's worker code calls collectives on the data-parallel group; a 1-process gloo group makes
    them identities, and the simulated ranks are a loop (their gradients are averaged explicitly)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
        yield
        dist.destroy_process_group()
