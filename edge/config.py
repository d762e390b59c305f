"""JSON round-trip for the frozen config dataclasses of every stage (train, convert, calibrate, bench, run).

Each CLI builds one config, saves it beside what it produced, and can read it back: tuples are stored as JSON
lists and come back as tuples, so a loaded config compares equal to the one that was saved.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any


class JsonConfig:
    """Mixin for frozen dataclasses. `strict = False` ignores unknown keys (e.g. records with extra fields)."""

    strict = True

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and cls.strict:
            raise ValueError(f"unknown {cls.__name__} key(s): {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> None:
        from .bundle import atomic_write_json
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))
