"""What a data directory stores, read without stopping the server: each shard's snapshot
(SQLite, read-only) plus the tail of its log (read without the writer's lock)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from ._core import LogReader, decode_value, snapshot_value
from .server.layout import read_layout

__all__ = ["stored_state"]


def _shards(data: Path) -> list[Path]:
    layout = read_layout(data)
    if layout is not None:  # served by `fastactor serve`
        return [d for d in layout.shard_dirs(data) if d.is_dir()]
    return [data] if (data / "state.sqlite3").exists() else []  # a Runtime's own directory


def stored_state(data: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Maps (type, instance name) to its keys and decoded values. Types of other accounts
    than "default" read "account/Type"."""
    state: dict[str, dict[str, bytes]] = {}
    decode = msgspec.msgpack.Decoder().decode
    for shard in _shards(Path(data)):
        db = sqlite3.connect(f"file:{shard / 'state.sqlite3'}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT v FROM meta WHERE k = 'applied_lsn'").fetchone()
            applied = row[0] if row else 0
            sealed = db.execute("SELECT v FROM meta WHERE k = 'format'").fetchone() is not None
            path = str(shard / "state.sqlite3")
            for inst, key, value in db.execute("SELECT inst, key, value FROM kv"):
                if sealed:  # values carry a checksum (a snapshot not yet opened by serve: none)
                    value = snapshot_value(path, inst, key, value)
                state.setdefault(inst, {})[key] = value
        finally:
            db.close()
        if (shard / "log").is_dir():
            for _, _, payload in LogReader(shard / "log", applied + 1):
                inst, cleared, puts = decode(payload)
                d = state.setdefault(inst, {})
                if cleared:
                    d.clear()
                for k, v in puts.items():
                    if v is None:
                        d.pop(k, None)
                    else:
                        d[k] = v
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for inst, kv in state.items():
        if kv:
            type_name, _, name = inst.partition("\0")
            out[(type_name, name)] = {k: decode_value(v) for k, v in sorted(kv.items())}
    return out
