"""The driver's own state (stage reached, step, data position, RNG), saved atomically next
to the learner checkpoints so `--resume` continues where a killed job stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path


class JobState:
    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.data: dict = {}
        if not fresh and path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"corrupt job state {path}: {exc}") from None

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def done(self, stage: str) -> bool:
        return stage in self.data.get("done", [])

    def update(self, **values) -> None:
        self.data.update(values)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float))
        os.replace(tmp, self.path)

    def mark_done(self, stage: str, result: dict) -> None:
        done = [s for s in self.data.get("done", []) if s != stage] + [stage]
        self.update(done=done, **{f"result_{stage}": result})
