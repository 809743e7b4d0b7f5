"""Value conversion for JSON columns, identical on SQLite and PostgreSQL.

PostgreSQL's ``json`` type rejects the ``NaN``/``Infinity`` tokens that Python's ``json`` module
writes for non-finite floats (SQLite would accept them), so every JSON value stored by the
repository goes through ``json_safe``: non-finite floats become ``null``, tuples become lists,
mapping keys become strings. ``as_utc`` evens out timestamps read back from the two backends
(SQLite returns naive datetimes even for ``DateTime(timezone=True)`` columns; they hold UTC).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that serialises to standard JSON on every supported database."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return json_safe(value.item())
    raise TypeError(f"cannot store a {type(value).__name__} in a JSON column: {value!r:.80}")


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (naive values from SQLite are UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)
