"""Reading parameters as the Kedro CLI passes them."""

from __future__ import annotations

import re


def as_list(value) -> list:
    """A config list, or a string separated by ";" (``--params`` splits on commas, so lists are written
    ``a;b`` there); a single number is a one-item list and null an empty one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in re.split(r"[;,\s]+", value) if item]
    if isinstance(value, (int, float)):
        return [value]
    return list(value)
