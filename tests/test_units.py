import pytest

from moesim.units import parse_quantity


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("80GiB", "bytes", 80 * 2**30),
        ("32GB", "bytes", 32e9),
        ("16 MB", "bytes", 16e6),
        ("900GB/s", "bytes_per_s", 900e9),
        ("200Gb/s", "bytes_per_s", 25e9),
        ("400Gbps", "bytes_per_s", 50e9),
        ("1.5GiB/s", "bytes_per_s", 1.5 * 2**30),
        ("312TFLOPS", "flops_per_s", 312e12),
        ("19.5 TFLOP/s", "flops_per_s", 19.5e12),
        ("5us", "seconds", 5e-6),
        ("1.5ms", "seconds", 1.5e-3),
        ("2s", "seconds", 2.0),
        (7, "bytes", 7.0),
        ("1e3", "seconds", 1000.0),
    ],
)
def test_units_parse_to_si(text: object, kind: str, expected: float) -> None:
    assert parse_quantity(text, kind) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("80GiB/s", "bytes"),
        ("5 parsecs", "seconds"),
        ("fast", "flops_per_s"),
        (True, "bytes"),
        ("12XB", "bytes"),
        ("5GB", "seconds"),
    ],
)
def test_units_reject_wrong_dimension(text: object, kind: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_quantity(text, kind)
