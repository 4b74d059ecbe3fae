"""The Engram Valkey module's tests need engram.so: built by `make install`."""

from __future__ import annotations

import pytest

from engram import binaries


@pytest.fixture(autouse=True)
def _engram_module_built() -> None:
    try:
        binaries.valkey_module()
    except binaries.BinaryNotFound as error:
        pytest.fail(str(error))
