"""Unit-test fixtures: a fresh metrics registry per test (thread leaks: see tests/conftest.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from edgedet.metrics import Metrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)
