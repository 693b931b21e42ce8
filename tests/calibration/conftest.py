"""Fixtures for calibration tests: a model contract with small views, and dataset specs from ../shared."""

from __future__ import annotations

import pytest

from edge_agent.modelmeta import ModelMeta
from edge_agent.views import ViewGeometry
from tests.conftest import shared_path

SMALL_PERSON = ViewGeometry(scale=1.25, size=32)
SMALL_SCENE = ViewGeometry(scale=4.0, size=32, y_shift=0.75)


@pytest.fixture(scope="session")
def meta() -> ModelMeta:
    """The contract a checkpoint of ``affectline_mnv2_32`` carries (names, normalisation, 32 px views)."""
    from train.checkpoint import make_meta
    from train.data.records import CLASSES

    return make_meta(CLASSES, SMALL_PERSON, SMALL_SCENE, {"model": "affectline_mnv2_32"}, "test")


@pytest.fixture(scope="session")
def expw_spec() -> str:
    return f"expw:{shared_path('data', 'expw')}"


@pytest.fixture(scope="session")
def ferplus_spec() -> str:
    return f"ferplus:{shared_path('data', 'ferplus')}"
