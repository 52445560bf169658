"""torchfit's pytest plugin: fixtures for unit tests of models and training code.

Installed with torchfit as the ``pytest11`` entry point ``torchfit.testing.plugin``, so
pytest loads it in any project that has torchfit installed; ``pytest -p
torchfit.testing.plugin`` loads it explicitly and ``-p no:torchfit.testing.plugin`` turns it off.

Fixtures:

- ``classification_data``, ``regression_data``, ``sequence_data``, ``image_data``: 128
  seeded samples as a ``TensorDataset`` (``torchfit.testing.data``), the same on every run;
- ``no_host_sync``: a ``HostSyncAudit`` recording every op of the test; pass it to ``fit`` as a
  callback and the test fails if a training or validation step read a device value back
  outside the logging points, naming the op and the line;
- ``seeded``: ``torchfit.seed_everything(0)`` for the test, the random states restored after it.

>>> # def test_trains_without_syncs(no_host_sync, classification_data):
>>> #     model.fit(2, DataLoader(classification_data, 16), callbacks=[no_host_sync])
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest
from torch.utils.data import TensorDataset

from . import data
from .checks import _restore_rng, _rng_states
from .syncs import HostSyncAudit


@pytest.fixture
def classification_data() -> TensorDataset:
    """128 samples, 4 features, 3 balanced classes (int64 labels)."""
    return data.classification(128)


@pytest.fixture
def regression_data() -> TensorDataset:
    """128 samples, 4 features, a float target column ``(N, 1)``."""
    return data.regression(128)


@pytest.fixture
def sequence_data() -> TensorDataset:
    """128 sequences ``(12 steps, 3 features)``, batch first, with a binary label that depends on order."""
    return data.sequences(128)


@pytest.fixture
def image_data() -> TensorDataset:
    """128 one-channel 8x8 images in 4 classes."""
    return data.images(128)


@pytest.fixture
def seeded() -> Iterator[int]:
    """``seed_everything(0)`` for the test; Python's, numpy's and torch's random states come back after it."""
    from ..seeding import seed_everything

    saved = _rng_states()
    try:
        yield seed_everything(0)
    finally:
        _restore_rng(saved)


@pytest.fixture
def no_host_sync() -> Iterator[HostSyncAudit]:
    """A ``HostSyncAudit`` active for the whole test: ``model.fit(..., callbacks=[no_host_sync])``.

    The test fails after its body if a step synced outside the logging points, or if the
    audit was never given to a fit.
    """
    audit = HostSyncAudit()
    with audit:
        yield audit


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Any:
    result = yield  # a test that already failed keeps its own error
    audit = getattr(item, "funcargs", {}).get("no_host_sync")
    if isinstance(audit, HostSyncAudit):
        audit.check()  # an AssertionError here fails the test itself, not its teardown
    return result
