"""What `--resume` needs to continue an interrupted run as if it had never stopped.

Per epoch: every model variable (weights, and the dropout layers' seed states) and the optimizer's variables
(Adam's moments), plus per stage its progress: epochs done, history, the best monitored loss, the weights at
that best epoch, and the early-stopping wait. When a stage ends: its result and its final weights, so a run
resumed in stage 2 still compares stage 2 against stage 1 and can fall back to stage 1's weights.

`state.json` is written last and names the files it belongs to (they carry the epoch in their names), so a run
killed while saving resumes from the previous complete epoch, never from a mix of two.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

VERSION = 2


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, *arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _assign(variables, values: list[np.ndarray]) -> bool:
    if len(variables) != len(values) or any(tuple(v.shape) != a.shape for v, a in zip(variables, values)):
        return False
    for v, a in zip(variables, values):
        v.assign(a)
    return True


class Checkpoint:
    def __init__(self, directory: Path, config: dict[str, Any] | None = None):
        self.dir = Path(directory)
        self.state_path = self.dir / "state.json"
        self.config = config  # a checkpoint from a differently configured run is not resumed
        self._state: dict[str, Any] = {"version": VERSION, "config": config, "stages": {}}

    # -- reading -------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Read state.json; False (and a fresh start) when there is none, or it is from another version or
        configuration, or its files are gone."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(state, dict) or state.get("version") != VERSION or state.get("config") != self.config:
            return False
        if not (self.dir / str(state.get("vars"))).is_file():
            return False
        self._state = state
        return True

    def describe(self) -> str:
        cur = self._state.get("current")
        done = [n for n, p in self._state["stages"].items() if p.get("done")]
        return f"{cur or 'nothing'} (finished: {', '.join(done) or 'none'})"

    def stage(self, name: str) -> dict[str, Any] | None:
        """This stage's saved progress: {"done", "next_epoch", "wait", "result", "best", "final"} or None."""
        return self._state["stages"].get(name)

    def restore(self, model) -> bool:
        """Every model variable as of the last saved epoch (or stage end)."""
        vars_file = self._state.get("vars")
        return bool(vars_file) and _assign(model.variables, _load_arrays(self.dir / vars_file))

    def restore_optimizer(self, optimizer, trainable) -> bool:
        opt_file = self._state.get("optimizer")
        if not opt_file or not (self.dir / opt_file).is_file():
            return False
        optimizer.build(trainable)
        return _assign(optimizer.variables, _load_arrays(self.dir / opt_file))

    def weights(self, name: str, which: str) -> list[np.ndarray] | None:
        """The full model's weights at stage `name`'s best epoch (`which="best"`) or its end ("final")."""
        rel = (self.stage(name) or {}).get(which)
        return _load_arrays(self.dir / rel) if rel else None

    # -- writing -------------------------------------------------------------------------------------------
    def save_epoch(self, name: str, full_model, optimizer, progress: dict[str, Any],
                   best: list[np.ndarray] | None) -> None:
        """After each epoch: variables, optimizer, this stage's progress (and its new best weights if any)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"{name}-e{progress['next_epoch']}"
        _save_arrays(self.dir / f"vars-{tag}.npz", [np.asarray(v.numpy()) for v in full_model.variables])
        _save_arrays(self.dir / f"opt-{tag}.npz", [np.asarray(v.numpy()) for v in optimizer.variables])
        prev = self.stage(name) or {}
        if best is not None:
            _save_arrays(self.dir / f"best-{tag}.npz", best)
        entry = {**progress, "done": False, "best": f"best-{tag}.npz" if best is not None else prev.get("best")}
        self._commit(name, entry, f"vars-{tag}.npz", f"opt-{tag}.npz")

    def finish_stage(self, name: str, full_model, result: dict[str, Any]) -> None:
        """A stage ended (all epochs or early stop, best weights restored): record it and its final weights."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _save_arrays(self.dir / f"final-{name}.npz", full_model.get_weights())
        _save_arrays(self.dir / f"vars-{name}-end.npz", [np.asarray(v.numpy()) for v in full_model.variables])
        prev = self.stage(name) or {}
        self._commit(name, {**prev, "result": result, "done": True, "final": f"final-{name}.npz"},
                     f"vars-{name}-end.npz", None)

    def _commit(self, name: str, entry: dict[str, Any], vars_file: str, opt_file: str | None) -> None:
        from trashcam.edge.bundle import atomic_write_json
        self._state["stages"][name] = entry
        self._state.update(current={"stage": name, "next_epoch": entry.get("next_epoch")}, vars=vars_file,
                           optimizer=opt_file)
        atomic_write_json(self.state_path, self._state)
        keep = {"state.json", vars_file, opt_file} | {p.get(k) for p in self._state["stages"].values()
                                                      for k in ("best", "final")}
        for p in self.dir.glob("*.npz"):  # files of earlier epochs, now that the state no longer names them
            if p.name not in keep:
                p.unlink(missing_ok=True)
