"""``torchfit.testing``: helpers for unit tests of models and training code.

Assertions (``checks``): ``assert_loss_decreases``, ``assert_can_overfit``,
``assert_gradients_flow``, ``assert_batch_independent``, ``assert_deterministic``.
Toy data (``data``): ``classification``, ``regression``, ``sequences``, ``images``.
Host syncs (``syncs``): ``HostSyncAudit``, ``SyncRecorder``. The pytest plugin
(``plugin``) serves the data and the audit as fixtures.

>>> from torch import nn
>>> from torchfit.testing import assert_gradients_flow, data
>>> x, y = data.classification(16).tensors
>>> _ = assert_gradients_flow(nn.Sequential(nn.Linear(4, 3)), (x, y), loss_fn=nn.CrossEntropyLoss())
"""
from . import data
from .checks import (assert_batch_independent, assert_can_overfit, assert_deterministic, assert_gradients_flow,
                     assert_loss_decreases)
from .syncs import HostSync, HostSyncAudit, SyncRecorder

__all__ = ["assert_loss_decreases", "assert_can_overfit", "assert_gradients_flow", "assert_batch_independent",
           "assert_deterministic", "HostSyncAudit", "HostSync", "SyncRecorder", "data"]
