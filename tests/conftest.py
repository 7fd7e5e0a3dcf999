"""Session-wide test options (loaded for every test run, whatever paths are given)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here and not in tests/drivers/conftest.py: pytest only honours options of conftests loaded at
    # start-up, and `pytest --device-address=...` from the repository root loads only this one.
    parser.addoption(
        "--device-address",
        action="store",
        default=None,
        help="VISA address of a real instrument for the opt-in hardware tests (tests/drivers/*_with_device.py)",
    )
