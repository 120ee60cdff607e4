import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_batch(n_groups, G, T, *, seed=0, binary=True, zero_length_rows=0, dtype=torch.float64, logp_scale=1.0):
    """Random (token_logps, old_token_logps, mask, rewards) in the package's row layout.

    Masks are ragged (each row has a random length, padding on the right); the first
    `zero_length_rows` rows have empty completions. Old log-probs are the current ones
    plus noise so that importance ratios spread across the clip range.
    """
    gen = torch.Generator().manual_seed(seed)
    B = n_groups * G
    token_logps = -torch.rand(B, T, generator=gen, dtype=dtype) * 3 * logp_scale
    old = token_logps + 0.3 * torch.randn(B, T, generator=gen, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[:zero_length_rows] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    if binary:
        rewards = torch.randint(0, 2, (B,), generator=gen).to(dtype)
    else:
        rewards = torch.rand(B, generator=gen, dtype=dtype)
    return token_logps, old, mask, rewards


@pytest.fixture
def batch():
    return make_batch
