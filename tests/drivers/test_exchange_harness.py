"""The exact-exchange harness itself must fail on every kind of difference from the script."""

from __future__ import annotations

import pytest

from drivers.keysight_34465a import Keysight34465A
from drivers.testing import ExchangeMismatchError, expected_exchange

CONNECT = [
    ("*IDN?", "Keysight Technologies,34465A,1,1"),
    ("SENS:FUNC?", '"VOLT"'),
    ("SENS:VOLT:NPLC?", "+1.0E+01"),
    ("SENS:VOLT:RANG?", "+1.0E+01"),
    ("SENS:VOLT:RANG:AUTO?", "1"),
]


def test_exact_script_passes():
    with expected_exchange(Keysight34465A, [*CONNECT, ("SENS:VOLT:NPLC 1.000000E+00", None)]) as dmm:
        dmm.nplc = 1.0


def test_extra_message_fails():
    with pytest.raises(ExchangeMismatchError, match=r"extra command 'SENS:VOLT:NPLC 1\.000000E\+00'"), expected_exchange(Keysight34465A, CONNECT) as dmm:
        dmm.nplc = 1.0


def test_missing_message_fails():
    with pytest.raises(ExchangeMismatchError, match="1 expected message\\(s\\) never sent"), expected_exchange(Keysight34465A, [*CONNECT, ("READ?", "+1.0")]):
        pass


def test_different_message_fails_even_if_the_body_raised():
    script = [*CONNECT, ("SENS:VOLT:NPLC 1.000000E+01", None), ("READ?", "+1.0")]
    with pytest.raises(ExchangeMismatchError, match=r"sent 'SENS:VOLT:NPLC 1\.000000E\+00', expected 'SENS:VOLT:NPLC 1\.000000E\+01'"), expected_exchange(Keysight34465A, script) as dmm:
        dmm.nplc = 1.0
        _ = dmm.reading  # answered with the off-script marker, which is not a number


def test_wrong_order_at_connect_fails():
    swapped = [CONNECT[0], CONNECT[1], CONNECT[3], CONNECT[2], CONNECT[4]]
    with pytest.raises(ExchangeMismatchError, match="expected 'SENS:VOLT:RANG\\?'"), expected_exchange(Keysight34465A, swapped):
        pass
