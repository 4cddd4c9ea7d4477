"""Durations in Ollama's keep_alive syntax ("5m", "1h30m", 300, -1): reading them and showing them.

Pure functions, no I/O; used by the per-model settings, the server settings, the requests' `keep_alive`
and `ortserve ps`.
"""

from __future__ import annotations

import math
import re
from typing import Any

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
FOREVER = math.inf


def parse_duration(value: str | int | float) -> float:
    """Seconds from Ollama's keep_alive: a number of seconds, or Go's duration syntax ("5m", "1h30m",
    "10s", "1.5h"), or a string of seconds ("300"). 0 means at once; any negative value means forever
    (`FOREVER`). Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            seconds = math.nan
            if body and _PART.sub("", body) == "":
                seconds = sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(body))
        if len(text) - len(body) > 1 or not body or math.isnan(seconds):
            raise ValueError(f"invalid duration {value!r}: use seconds or units such as '5m', '1h30m', '10s'")
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}")
    return FOREVER if seconds < 0 else seconds


def format_duration(seconds: float) -> str:
    """A short human form: 'forever', '45s', '4m 59s', '2h 3m'."""
    if seconds == FOREVER:
        return "forever"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def check_duration(value: Any) -> Any:
    """A settings field's keep_alive (a pydantic "before" validator): None, or a duration kept as written
    ("5m", 300 -> "300"); ValueError for anything `parse_duration` refuses."""
    if value is None:
        return None
    parse_duration(value)
    return str(value)
