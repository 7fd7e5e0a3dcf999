"""The board protocol's encoding: round trips, lossless narrowing, and refusal of malformed messages."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hil.board_protocol import (
    BoardProtocolError,
    decode_block,
    encode_message,
    join_chunks,
    parse_line,
    read_message,
)


def roundtrip(data: bytes, **kw):
    async def go():
        reader = asyncio.StreamReader(limit=65536)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_message(reader, **kw)

    return asyncio.run(go())


def test_round_trip_of_scalars_strings_and_arrays():
    rng = np.random.default_rng(0)
    params = {
        "core": np.array([0, 3, 63]),
        "amp": 312.5,
        "tiny": 1e-300,
        "mode": "4phase",
        "note": 'two words, a "quote" and\na newline',
        "x": rng.integers(-127, 128, (3, 5, 7)).astype(np.int8),
        "y": rng.integers(-(2**31), 2**31 - 1, (4, 4), dtype=np.int64).astype(np.int32),
        "g": rng.normal(size=6),
        "h": np.array([1.5, -2.0, np.inf, np.nan]),
        "s": rng.normal(size=(2, 3)).astype(np.float16),
        "relu": np.array([True, False]),
        "empty": np.zeros((0, 4), dtype=np.int32),
    }
    msg = roundtrip(join_chunks(encode_message("TEST", "ab-12", params, narrow=True)))
    assert (msg.verb, msg.rid) == ("TEST", "ab-12")
    assert msg.get_float("amp") == 312.5 and msg.get_float("tiny") == 1e-300
    assert msg.get_str("mode") == "4phase" and msg.get_str("note") == params["note"]
    for key in ("core", "x", "y", "g", "h", "s", "relu", "empty"):
        got = msg.get_array(key)
        assert got.dtype == params[key].dtype and got.shape == params[key].shape, key
        np.testing.assert_array_equal(got, params[key])
        assert got.flags.writeable


def test_narrowing_is_lossless_and_shrinks_the_wire():
    y = np.arange(-300, 300, dtype=np.int32)
    wide = join_chunks(encode_message("OK", "r1", {"y": y}))
    narrow = join_chunks(encode_message("OK", "r1", {"y": y}, narrow=True))
    assert b"y=@i2:i4[600]" in narrow and len(narrow) < 0.6 * len(wide)
    amps = np.array([150.0, 275.0, 700.0])  # exactly representable in float32
    assert b"@f4:f8[3]" in join_chunks(encode_message("OK", "r", {"a": amps}, narrow=True))
    assert b"@f8[3]" in join_chunks(encode_message("OK", "r", {"a": amps + 1e-9}, narrow=True))


@pytest.mark.parametrize(
    ("line", "fatal", "match"),
    [
        (b"NOW\n", False, "no request id"),
        (b"NOW bad!id\n", False, "request id"),
        (b"now r1\n", False, "malformed"),
        (b"NOW r1 junk\n", False, "expected key=value"),
        (b"NOW r1 a=1 a=2\n", False, "given twice"),
        (b"NOW r1 a=\"unterminated\n", False, "bad string literal"),
        (b"NOW r1 a=x;y\n", False, "quote values"),
        (b"MVM r1 x=@q9[3]\n", True, "not an array descriptor"),
        (b"MVM r1 x=@i1[3,x]\n", True, "not an array descriptor"),
        (b"MVM r1 x=@i1[1,1,1,1,1,1,1,1,1]\n", True, "at most 8"),
        (b"NOW r1 \xff\xfe\n", False, "not ASCII"),
        (b"MVM r1 \xff x=@i1[3]\n", True, "not ASCII"),
    ],
)
def test_malformed_lines(line, fatal, match):
    with pytest.raises(BoardProtocolError, match=match) as exc:
        parse_line(line)
    assert exc.value.fatal is fatal


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"MVM r1 x=@i1[4]\n#14abc", "connection closed in the middle"),
        (b"MVM r1 x=@i1[4]\n#15abcde\n", "block holds 5 bytes"),
        (b"MVM r1 x=@i1[4]\nX14abcd\n", "definite-length block"),
        (b"MVM r1 x=@i1[4]\n#0abcd\n", "definite-length block"),
        (b"MVM r1 x=@i1[4]\n#1xabcd\n", "not decimal"),
        (b"MVM r1 x=@i1[4]\n#14abcdZ", "missing"),
        (b"MVM r1 x=@i4[1000000000]\n#9400000000", "exceeds the server limit"),
        (b"MVM r1 x=@f4:i4[1]\n#14abcd\n", "cannot widen"),
    ],
)
def test_bad_blocks_are_fatal_errors(data, match):
    with pytest.raises(BoardProtocolError, match=match) as exc:
        roundtrip(data, max_block_bytes=2**20)
    assert exc.value.fatal and exc.value.rid == "r1"


def test_clean_end_of_stream_and_idn():
    assert roundtrip(b"") is None
    assert roundtrip(b"*IDN?\n").verb == "*IDN?"


def test_typed_getters_name_the_parameter():
    msg, _ = parse_line(b"SLEEP r1 s=abc n=1.5 w=word\n")
    with pytest.raises(BoardProtocolError, match="s='abc' is not a number"):
        msg.get_float("s")
    with pytest.raises(BoardProtocolError, match=r"n='1\.5' is not an integer"):
        msg.get_int("n")
    with pytest.raises(BoardProtocolError, match="needs parameter 'q'"):
        msg.get_float("q")
    with pytest.raises(BoardProtocolError, match="must be an array"):
        msg.get_array("w")


def test_decode_block_checks_length():
    from hil.board_protocol import ArraySpec

    with pytest.raises(BoardProtocolError, match="needs 8"):
        decode_block(ArraySpec("i4", "i4", (2,)), b"1234")
