"""Fuzzes the codec's decoder: any bytes either decode to a value or raise CodecError, and a
decoded value encodes again and decodes to an equal value of the same types.

    python tests/fuzz/fuzz_codec.py tests/fuzz/corpus/codec -max_total_time=60
"""

import re
import sys

import atheris

with atheris.instrument_imports():
    from fastactor import CodecError
    from fastactor._core import decode_value, encode_value


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (NaN equal to NaN). Sets are compared
    as sets: their encoding follows iteration order, which is not canonical."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):  # in order (kept by the codec), so NaN keys compare too
        return same(list(a.items()), list(b.items()))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and (a == b or any(x != x for x in a))
    if isinstance(a, re.Pattern):
        return (a.pattern, a.flags) == (b.pattern, b.flags)
    return a == b


def test_one_input(data: bytes) -> None:
    try:
        value = decode_value(data)
    except CodecError:
        return
    try:
        again = encode_value(value)
    except CodecError as e:
        # The decoder is lenient about depth; the encoder refuses what it could not have
        # written (more than 256 levels): a clear error, the only one allowed here.
        assert "levels deep" in str(e), (data, e)
        return
    assert same(decode_value(again), value), (data, value)


if __name__ == "__main__":
    # The native code is not instrumented (that needs clang's -fsanitize=fuzzer-no-link):
    # coverage comes from the Python code, this harness (and its model) included.
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
