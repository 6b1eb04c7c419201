"""Training checkpoints: DeepSpeed's (module, ZeRO optimizer partitions, step counters) plus the
driver's state (step, data position, anything it needs to resume) and every rank's RNG states.

Layout: `<dir>/<tag>/` holds DeepSpeed's files, `driver_state.pt` and `rng_rank<r>.pt`; DeepSpeed
writes `<dir>/latest` (the tag) last, so a checkpoint that `latest` names is complete. Only the
newest `keep` tags stay (a 2B policy's ZeRO checkpoint is ~30 GB: a long run would fill disks). Loading
checks the files first and turns every failure into a CheckpointError naming the path:
DeepSpeed itself only warns and returns None on a missing checkpoint.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

DRIVER_STATE = "driver_state.pt"
LATEST = "latest"
MODEL_STATES = "mp_rank_00_model_states.pt"
TAG = re.compile(r"step_\d{8}")


class CheckpointError(RuntimeError):
    """A missing, incomplete or unreadable checkpoint; the message names the path."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine, directory: str | Path, driver_state: dict, keep: int = 0) -> Path:
    """Collective. Returns the tag directory; then removes all but the newest `keep` tags
    (0: keeps every one)."""
    directory = Path(directory)
    tag = f"step_{engine.global_steps:08d}"
    path = directory / tag
    path.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), path / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        torch.save(dict(driver_state), path / DRIVER_STATE)
    _barrier()
    engine.save_checkpoint(str(directory), tag=tag)
    _barrier()
    if _rank() == 0 and keep > 0:
        prune(directory, keep)
    return path


def prune(directory: Path, keep: int) -> list[Path]:
    """Removes all but the newest `keep` tag directories (never the one `latest` names);
    returns what it removed."""
    latest = (directory / LATEST).read_text().strip() if (directory / LATEST).is_file() else None
    tags = sorted(p for p in directory.iterdir() if p.is_dir() and TAG.fullmatch(p.name))
    old = [p for p in tags[:-keep] if p.name != latest]
    for p in old:
        shutil.rmtree(p)
    return old


def resolve(path: str | Path) -> tuple[Path, str]:
    """(checkpoint dir, tag) for a checkpoint dir (its `latest`) or a tag dir."""
    path = Path(path)
    if (path / LATEST).is_file():
        directory, tag = path, (path / LATEST).read_text().strip()
    elif (path / MODEL_STATES).is_file() or (path / DRIVER_STATE).is_file():
        directory, tag = path.parent, path.name
    else:
        raise CheckpointError(f"no checkpoint at {path}: neither {path / LATEST} nor a tag "
                              f"directory with {MODEL_STATES}")
    tag_dir = directory / tag
    needed = [tag_dir / DRIVER_STATE, tag_dir / f"rng_rank{_rank()}.pt"]
    missing = [str(p) for p in needed if not p.is_file()]
    if not tag_dir.is_dir() or missing:
        raise CheckpointError(f"incomplete checkpoint {tag_dir}: missing {missing or [str(tag_dir)]}")
    return directory, tag


def _agree(error: Exception | None, path: Path) -> None:
    """Raise on every rank if any rank failed, so that no rank waits in a collective for a
    rank that has given up."""
    failed = torch.tensor([error is not None], dtype=torch.int32)
    if dist.is_initialized() and dist.get_world_size() > 1:
        from learner.engine import device

        failed = failed.to(device())
        dist.all_reduce(failed)
    if error is not None:
        raise error
    if int(failed.item()):
        raise CheckpointError(f"checkpoint {path} failed to load on another rank")


def load(engine, path: str | Path) -> dict:
    """Collective. Restores module, optimizer, step counters and RNG; returns the driver state."""
    try:
        directory, tag = resolve(path)
        error = None
    except CheckpointError as exc:
        error = exc
    _agree(error, Path(path))
    tag_dir = directory / tag
    try:
        loaded, _ = engine.load_checkpoint(str(directory), tag=tag)
        rng = torch.load(tag_dir / f"rng_rank{_rank()}.pt", weights_only=False)
        driver_state = torch.load(tag_dir / DRIVER_STATE, weights_only=False)
    except Exception as exc:  # torch/pickle/DeepSpeed errors carry no path
        raise CheckpointError(f"cannot load checkpoint {tag_dir}: {type(exc).__name__}: {exc}") from exc
    if loaded is None:
        raise CheckpointError(f"DeepSpeed found no loadable checkpoint in {tag_dir}")
    set_rng_state(rng)
    _barrier()
    return driver_state
