"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to a temporary file next to `path` (creating its folder), then renames it over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    """`obj` as JSON (indent 1 unless `dump_kwargs` say otherwise), atomically."""
    atomic_write_text(path, json.dumps(obj, **{"indent": 1, **dump_kwargs}))
