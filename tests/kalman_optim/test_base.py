"""The optimizers' shared machinery (kalman_optim/_base.py): step counters."""

import numpy as np
import torch

from kalman_optim._base import _advance_counters


def test_counters_advance_through_cached_views_and_follow_replaced_or_edited_counters():
    counters = [torch.tensor(float(i), dtype=torch.float32) for i in range(5)]
    views = {}
    assert _advance_counters(counters, views) == [1, 2, 3, 4, 5]
    assert [int(c) for c in counters] == [1, 2, 3, 4, 5] and len(views) == 5
    counters[0].fill_(41.0)  # an edit in place is read through the same view
    counters[1] = torch.tensor(7.0)  # a replaced counter gets a view of its own
    assert _advance_counters(counters, views) == [42, 8, 4, 5, 6]
    assert int(counters[1]) == 8 and views[id(counters[1])][0] is counters[1]


def test_counters_numpy_cannot_view_take_torch_ops():
    """A bfloat16 counter (NumPy has no bfloat16) and one that requires grad: both advance, on torch's ops."""
    counters = [torch.tensor(3.0), torch.tensor(2.0, dtype=torch.bfloat16), torch.tensor(9.0, requires_grad=True)]
    with torch.no_grad():  # as in step()
        steps = _advance_counters(counters, {})
    assert steps == [4, 3, 10]
    assert [float(c) for c in counters] == [4.0, 3.0, 10.0]
    assert counters[1].dtype == torch.bfloat16


def test_stale_views_are_forgotten():
    views = {i: (torch.tensor(0.0), np.zeros(())) for i in range(200)}
    counters = [torch.tensor(1.0)]
    assert _advance_counters(counters, views) == [2]
    assert len(views) == 1
