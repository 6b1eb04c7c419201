"""Tiny models of the real architectures, built locally (no hub on these machines).

The policy is a `Qwen3VLForConditionalGeneration` and the embedder a `Qwen3VLModel` of the
same size (the released Qwen3-VL-Embedding is the base model with last-token pooling), both
with random weights, a locally trained tokenizer and real processor configs, saved in
the Hugging Face layout so that vLLM, transformers and our loader open them exactly
as they open Qwen/Qwen3-VL-2B-Instruct and Qwen/Qwen3-VL-Embedding-2B.
Untied embeddings (vLLM's weight reload leaves a tied LM head stale) and head_dim 64
(supported by vLLM's CPU attention).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from config.schema import Config, SynthConfig, TinyPretrainConfig, VideoConfig
from corpus.synth import generate_corpus
from models.sqr_heads import SQRHeads, SQRHeadsConfig
from tiny.embedder_pretrain import pretrain_embedder
from tiny.policy_pretrain import pretrain_policy
from tiny.tokenizer import CHAT_TEMPLATE, train_tokenizer

POLICY_DIR = "tiny-qwen3vl-policy"
EMBEDDER_DIR = "tiny-qwen3vl-embedder"
MANIFEST = "tiny_manifest.json"
# Bump when the recipe changes so that cached models are rebuilt.
RECIPE_VERSION = 10
# Overrides for tiny models with random weights (their pretraining skipped): for benchmarks,
# whose speed does not depend on what the weights know, and tests that compare exact numbers.
RANDOM_TINY_MODELS = ["model.tiny_pretrain.embedder.steps=0", "model.tiny_pretrain.policy.steps=0"]
# The tiny models' own pretraining corpus: seed = model seed + this, never a run's corpus.
PRETRAIN_SEED_OFFSET = 1000
# The default recipe's pretrained models, versioned with the code: pretraining sums floats in
# the order the host's kernels choose, so models built here differ by machine; shipped ones
# make the default's table the same everywhere and take pretraining out of a first run.
SHIPPED = Path(__file__).resolve().parent / "shipped"


class ShippedModelError(RuntimeError):
    """A shipped model file whose bytes are not the ones its manifest names."""


def _config(tokenizer, hidden: int, layers: int, vocab: int) -> Qwen3VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    head_dim = 64
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=hidden // head_dim,
            num_key_value_heads=max(1, hidden // head_dim // 2),
            head_dim=head_dim,
            max_position_embeddings=8192,
            rope_parameters=dict(
                rope_type="default", rope_theta=5_000_000.0,
                mrope_section=[12, 10, 10], mrope_interleaved=True,
            ),
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=hidden, num_position_embeddings=144,
            deepstack_visual_indexes=[1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_processor(tokenizer, max_pixels: int, max_frames: int) -> Qwen3VLProcessor:
    """Processor budgets follow the video config: frames are already decoded and
    resized by corpus.video, so the processor must not upscale them again."""
    image = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    video = Qwen3VLVideoProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 32 * 32 * 2, "longest_edge": max_pixels * max_frames},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        do_sample_frames=False, cap_pixels_per_frame=False,
    )
    return Qwen3VLProcessor(
        image_processor=image, video_processor=video, tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def _save(model, processor, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)


def with_tiny_models(cfg: Config) -> Config:
    """The config with each "tiny" model spec replaced by the built (cached) directory: the
    job's entry points call this once, so every actor and loader sees only directories."""
    if "tiny" not in (cfg.model.policy, cfg.model.embedder):
        return cfg
    policy, embedder = build_tiny_models(
        cfg.paths.model_cache, video=cfg.video, pretrain=cfg.model.tiny_pretrain,
        soft_tokens=cfg.sqr.num_tokens, seed=cfg.model.seed,
    )
    model = replace(cfg.model, policy=str(policy) if cfg.model.policy == "tiny" else cfg.model.policy,
                    embedder=str(embedder) if cfg.model.embedder == "tiny" else cfg.model.embedder)
    return replace(cfg, model=model)


def build_tiny_models(
    cache_dir: str | Path, *, video: VideoConfig | None = None,
    pretrain: TinyPretrainConfig | None = None, soft_tokens: int = 8, seed: int = 0,
    force: bool = False, shipped: Path = SHIPPED,
) -> tuple[Path, Path]:
    """Build (once) and return (policy_dir, embedder_dir) under cache_dir.

    Models shipped for the same recipe are copied in (hash-checked) instead; `force` builds
    anyway. Built models are pretrained on a synthetic corpus of their own (config.schema's
    TinyPretrainConfig says why); the reports are kept in the manifest."""
    cache_dir = Path(cache_dir)
    video, pretrain = video or VideoConfig(), pretrain or TinyPretrainConfig()
    recipe = recipe_of(video, pretrain, soft_tokens, seed)
    policy_dir, embedder_dir = cache_dir / POLICY_DIR, cache_dir / EMBEDDER_DIR
    manifest = cache_dir / MANIFEST
    if not force and manifest.is_file() and json.loads(manifest.read_text()).get("recipe") == recipe:
        return policy_dir, embedder_dir
    if not force and install_shipped(shipped, cache_dir, recipe):
        return policy_dir, embedder_dir
    for d in (policy_dir, embedder_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    manifest.unlink(missing_ok=True)

    torch.manual_seed(seed)
    tokenizer = train_tokenizer()
    vocab = 640
    assert len(tokenizer) <= vocab, f"tokenizer grew to {len(tokenizer)} tokens"
    processor = build_processor(tokenizer, video.max_pixels, video.max_frames)

    policy_cfg = _config(tokenizer, hidden=256, layers=4, vocab=vocab)
    policy = Qwen3VLForConditionalGeneration(policy_cfg).eval()
    policy.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    _save(policy, processor, policy_dir)

    embedder = Qwen3VLModel(policy_cfg).eval()
    _save(embedder, processor, embedder_dir)

    heads = SQRHeads(SQRHeadsConfig(policy_hidden=256, soft_dim=256, embedder_hidden=256,
                                    num_tokens=soft_tokens))
    heads.save(policy_dir)
    reports = {}
    if pretrain.embedder.steps or pretrain.policy.steps:
        # In a process of its own: a Python process keeps the heap it grew (the decoded
        # pretraining corpora, ~3 GB) after the data is freed, and the caller is often the
        # training job's driver.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            reports = pool.submit(_pretrain, cache_dir, policy_dir, embedder_dir, video,
                                  pretrain, seed, torch.get_rng_state().tolist()).result()
    manifest.write_text(json.dumps(dict(recipe=recipe, pretrain=reports), indent=1))
    return policy_dir, embedder_dir


def recipe_of(video: VideoConfig, pretrain: TinyPretrainConfig, soft_tokens: int, seed: int) -> dict:
    """Everything the tiny models' weights depend on: equal recipes, interchangeable models."""
    return dict(version=RECIPE_VERSION, video=asdict(video), pretrain=asdict(pretrain),
                soft_tokens=soft_tokens, seed=seed)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship_tiny_models(cache_dir: str | Path, dest: Path = SHIPPED) -> Path:
    """Copy the models built in cache_dir to dest with a manifest of every file's sha256: what
    a maintainer runs (`videosearch models tiny --ship`) after the recipe changes."""
    cache_dir = Path(cache_dir)
    built = json.loads((cache_dir / MANIFEST).read_text())
    shutil.rmtree(dest, ignore_errors=True)
    for name in (POLICY_DIR, EMBEDDER_DIR):
        shutil.copytree(cache_dir / name, dest / name)
    files = {str(p.relative_to(dest)): _sha256(p) for p in sorted(dest.rglob("*")) if p.is_file()}
    (dest / MANIFEST).write_text(json.dumps(built | {"files": files}, indent=1))
    return dest


def install_shipped(shipped: Path, cache_dir: Path, recipe: dict) -> bool:
    """Copy the shipped models into cache_dir if they were built from `recipe`; False if none
    were. Every file is checked against the manifest's sha256 before anything is copied."""
    manifest_path = shipped / MANIFEST
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("recipe") != recipe:
        return False
    for rel, digest in manifest["files"].items():
        path = shipped / rel
        if not path.is_file() or _sha256(path) != digest:
            raise ShippedModelError(
                f"shipped tiny model file {path} is missing or not the one its manifest names "
                f"(sha256 {digest[:12]}...): restore it (git checkout -- {shipped}) or build the "
                "models here with `videosearch models tiny --force`")
    for name in (POLICY_DIR, EMBEDDER_DIR):
        shutil.rmtree(cache_dir / name, ignore_errors=True)
        shutil.copytree(shipped / name, cache_dir / name)
    installed = {k: v for k, v in manifest.items() if k != "files"} | {"source": str(shipped)}
    (cache_dir / MANIFEST).write_text(json.dumps(installed, indent=1))
    return True


def _pretrain(cache_dir: Path, policy_dir: Path, embedder_dir: Path, video: VideoConfig,
              pretrain: TinyPretrainConfig, seed: int, rng_state: list[int]) -> dict:
    steps = {"embedder": pretrain.embedder.steps, "policy": pretrain.policy.steps}
    # The probes' initialisation continues the builder's random stream (another stream is
    # another pair of models: docs/experiments.md, "How seed-sensitive"). A list, not
    # the tensor: a tensor crosses processes through torch's fd sharing, which leaves a
    # resource-sharer thread in the caller blocked in accept() until interpreter exit.
    torch.set_rng_state(torch.tensor(rng_state, dtype=torch.uint8))
    def corpus(name: str, num_videos: int, offset: int):
        # Lower-case colours only: the engine never learns the run's query form (corpus/synth.py).
        return generate_corpus(SynthConfig(num_videos=num_videos, seed=seed + offset, capital_colours=False),
                               cache_dir / f"pretrain-corpus-{name}")

    reports = {}
    if steps["policy"]:
        reports["policy"] = asdict(pretrain_policy(
            policy_dir, corpus("policy", pretrain.policy.num_videos, 2 * PRETRAIN_SEED_OFFSET),
            video, pretrain.policy, seed))
    if steps["embedder"]:
        embedder_from_policy(policy_dir, embedder_dir)
        reports["embedder"] = asdict(pretrain_embedder(
            embedder_dir, corpus("embedder", pretrain.embedder.num_videos, PRETRAIN_SEED_OFFSET),
            video, pretrain.embedder, seed))
    return reports


def embedder_from_policy(policy_dir: Path, embedder_dir: Path) -> None:
    """The embedder's weights := the policy's without its LM head (the same architecture), as
    Qwen3-VL-Embedding starts from Qwen3-VL: the embedder pretrains from what the policy sees."""
    weights = load_file(policy_dir / "model.safetensors")
    state = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    embedder = Qwen3VLModel.from_pretrained(embedder_dir)
    embedder.load_state_dict(state, strict=True)
    embedder.save_pretrained(embedder_dir, safe_serialization=True)
