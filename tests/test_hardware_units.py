import pytest

from batchscope.errors import ConfigError
from batchscope.hardware import format_bytes, parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("1.5 gib", int(1.5 * 2**30)), ("64KiB", 65536),
    ("1000", 1000), (4096, 4096), ("3g", 3 * 10**9), ("100b", 100),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_percent_of_available():
    assert parse_bytes("40%", available=1000) == 400
    with pytest.raises(ConfigError, match=r"percentage \('40%'\) but the available memory is unknown"):
        parse_bytes("40%")
    with pytest.raises(ConfigError, match=r"must be a percentage in \(0, 100\]. Got '150%' instead."):
        parse_bytes("150%", available=1000)


@pytest.mark.parametrize("text, message", [
    ("lots", r"The 'memory_budget' parameter must be a size such as 512MB, 2GiB or 40%. Got 'lots' instead."),
    ("5 parsecs", r"unknown unit 'parsecs' in '5 parsecs'; use B, KB, MB, GB, KiB, MiB, GiB or %"),
    ("0MB", r"must be a positive size. Got '0MB' instead."),
    (True, r"Got True instead."),
])
def test_parse_bytes_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20 // 2) == "1.50 MiB"
    assert format_bytes(2**31) == "2.00 GiB"
    assert format_bytes(None) == "-"
