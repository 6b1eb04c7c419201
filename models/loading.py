"""One loader for tiny and real checkpoints: a model spec is "tiny" (built once into
the model cache) or a local Hugging Face directory (Qwen/Qwen3-VL-2B-Instruct,
Qwen/Qwen3-VL-Embedding-2B or an exported checkpoint of ours)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, Qwen3VLForConditionalGeneration

from config.schema import Config
from models.sqr_heads import SQRHeads
from models.tiny import build_tiny_models

# Overrides for tiny models with random weights (their pretraining skipped): for benchmarks,
# whose speed does not depend on what the weights know, and tests that compare exact numbers.
RANDOM_TINY_MODELS = ["model.tiny_pretrain.embedder.steps=0", "model.tiny_pretrain.policy.steps=0"]

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


def resolve_model_dirs(cfg: Config) -> tuple[Path, Path]:
    """(policy_dir, embedder_dir), building the tiny models on first use."""
    tiny = None
    if "tiny" in (cfg.model.policy, cfg.model.embedder):
        tiny = build_tiny_models(
            cfg.paths.model_cache, video=cfg.video, pretrain=cfg.model.tiny_pretrain,
            soft_tokens=cfg.sqr.num_tokens, seed=cfg.model.seed,
        )
    policy = tiny[0] if cfg.model.policy == "tiny" else Path(cfg.model.policy)
    embedder = tiny[1] if cfg.model.embedder == "tiny" else Path(cfg.model.embedder)
    return _check_dir(policy, "policy"), _check_dir(embedder, "embedder")


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
