"""Fixtures several test modules share; a module opts in with
`pytestmark = pytest.mark.usefixtures(...)`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def offline(monkeypatch):
    """Weight lookup reads disk caches only; this makes any accidental download fail loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared 2-core machine two OpenMP
    threads that wait on each other run several times slower than one, and 64² models gain
    little from a second anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
