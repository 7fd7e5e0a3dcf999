"""System tools some tests use (not pip packages): a test without one skips, naming it and how to install it.

CI (``.ci/run``) installs them and fails if it cannot, so there these tests always run.
"""

from __future__ import annotations

import shutil

import pytest

#: tool -> the Debian/Ubuntu package that provides it.
PACKAGES = {
    "h5ls": "hdf5-tools", "h5dump": "hdf5-tools", "mosquitto": "mosquitto", "mosquitto_passwd": "mosquitto",
    "openssl": "openssl", "chromium": "chromium", "chromedriver": "chromium-driver",
    "gcc": "gcc", "cc": "gcc", "clang": "clang",  # the emulator's native ADC chain (emulator/native.py)
}


def require(*tools: str) -> None:
    """Skip the calling test unless every tool is on PATH; the reason names the missing ones and the install command."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        packages = " ".join(dict.fromkeys(PACKAGES.get(t, t) for t in missing))
        pytest.skip(f"{', '.join(missing)} not installed: sudo apt-get install {packages} (CI installs it in .ci/run)")
