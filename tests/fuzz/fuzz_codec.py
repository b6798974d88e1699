"""Fuzzes the codec's decoder: any bytes either decode to a value or raise CodecError, and a
decoded value encodes again to bytes that decode to the same encoding.

    python tests/fuzz/fuzz_codec.py tests/fuzz/corpus/codec -max_total_time=60
"""

import sys

import atheris

with atheris.instrument_imports():
    from fastactor import CodecError
    from fastactor._core import decode_value, encode_value


def test_one_input(data: bytes) -> None:
    try:
        value = decode_value(data)
    except CodecError:
        return
    again = encode_value(value)
    assert encode_value(decode_value(again)) == again, (data, value)


if __name__ == "__main__":
    # The native code is not instrumented (that needs clang's -fsanitize=fuzzer-no-link):
    # coverage comes from the Python code, this harness (and its model) included.
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
