"""One loader for every checkpoint: a local Hugging Face directory (Qwen/Qwen3-VL-2B-Instruct,
Qwen/Qwen3-VL-Embedding-2B, the tiny stand-ins once built, or an exported checkpoint of ours).
The "tiny" spec is resolved into directories by the entry points (tiny.build.with_tiny_models)
before anything here runs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, Qwen3VLForConditionalGeneration

from config.schema import Config
from models.sqr_heads import SQRHeads

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(FileNotFoundError):
    """A model directory that does not exist or lacks config.json."""


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _check_dir(path: Path, role: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{role} model not found: {path} has no config.json "
            "(use 'tiny' or a local Hugging Face model directory)"
        )
    return path


def model_dirs(cfg: Config) -> tuple[Path, Path]:
    """(policy_dir, embedder_dir) of the config, each checked to be a model directory."""
    for role, spec in (("policy", cfg.model.policy), ("embedder", cfg.model.embedder)):
        if spec == "tiny":
            raise ModelNotFoundError(
                f"model.{role} is 'tiny', which the job's entry points turn into the built tiny "
                "model's directory (tiny.build.with_tiny_models); pass the config through it first")
    return (_check_dir(Path(cfg.model.policy), "policy"),
            _check_dir(Path(cfg.model.embedder), "embedder"))


def load_processor(model_dir: str | Path):
    return AutoProcessor.from_pretrained(_check_dir(Path(model_dir), "model"))


def load_policy(model_dir: str | Path, dtype: str = "float32"):
    """The policy as transformers sees it, plus its SQR heads."""
    model_dir = _check_dir(Path(model_dir), "policy")
    dt = torch_dtype(dtype)
    model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=dt)
    return model, SQRHeads.load(model_dir, dt)


def load_embedder(model_dir: str | Path, dtype: str = "float32"):
    """The embedder's base model (Qwen3VLModel); last-token pooling is the caller's."""
    model_dir = _check_dir(Path(model_dir), "embedder")
    return AutoModel.from_pretrained(model_dir, dtype=torch_dtype(dtype))
