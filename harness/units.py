"""Values as a reader wants them: "9.74 us", "1.2 s", "73 %", "1,234", with the unit taken from
the metric registry (harness.metrics) and the SI prefix chosen from the value.

    quantity(9.74e-06, "s") -> "9.74 us"     quantity(1830, "us") -> "1.83 ms"
    quantity(12.5, "pct") -> "12.5 %"        quantity(50, "rps") -> "50.0 /s"
"""

from __future__ import annotations

import math

from harness.metrics import TIME_UNITS

# Time prefixes, largest first, as (symbol, factor to microseconds).
_TIME_STEPS: tuple[tuple[str, float], ...] = (("s", 1e6), ("ms", 1e3), ("us", 1.0), ("ns", 1e-3))
_SUFFIX = {"pct": "%", "rps": "/s", "count": ""}


def significant(x: float, digits: int = 3) -> str:
    """`x` with `digits` significant digits and thousands separators ("1,234", "9.74", "0.0123")."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:,.0f}"
    dec = digits - 1 - mag
    if dec > 6:  # too small for plain decimals to stay readable
        return f"{x:.{digits - 1}e}"
    return f"{x:,.{dec}f}"


def time_prefix(value_us: float) -> tuple[str, float]:
    """(symbol, factor to microseconds) of the prefix that shows `value_us` as 1..999."""
    a = abs(value_us)
    for sym, f in _TIME_STEPS:
        if a >= f * 0.9995:
            return sym, f
    return _TIME_STEPS[-1]


def quantity(
    value: float, unit: str, digits: int = 3, *, sign: bool = False, prefix: str | None = None
) -> str:
    """`value` (in `unit`, a harness.metrics unit) as text with its unit; time values get the SI
    prefix that keeps them readable (or `prefix`, e.g. "us", to put several values on one scale);
    '' for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    v = float(value)
    plus = "+" if sign and v > 0 else ""
    if v == 0:
        return f"0 {_SUFFIX.get(unit, unit)}".strip()
    if unit in TIME_UNITS:
        us = v * TIME_UNITS[unit]
        sym, f = (prefix, TIME_UNITS[prefix]) if prefix else time_prefix(us)
        return f"{plus}{significant(us / f, digits)} {sym}"
    suffix = _SUFFIX.get(unit, unit)
    if unit == "count" and v == round(v) and abs(v) < 1e15:
        return f"{plus}{int(round(v)):,}"
    return f"{plus}{significant(v, digits)}{' ' + suffix if suffix else ''}"


def tick_formatter(unit: str):
    """A matplotlib FuncFormatter writing plain tick numbers with their unit ("73 us", "1.5 ms")."""
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos=None):
        if v <= 0 and unit in TIME_UNITS:
            return "0" if v == 0 else ""
        return quantity(v, unit, digits=2 if abs(v) < 1e9 else 3).replace(".0 ", " ")

    return FuncFormatter(fmt)


def count(n: float) -> str:
    """A Service count as the axis and the text show it: 50,000."""
    return f"{int(n):,}"
