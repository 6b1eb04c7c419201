"""Caption pretraining of the tiny policy, standing in for the pretraining of the released
Qwen3-VL-2B-Instruct, which already sees colours, shapes and moments in a video.

A random tiny policy does not, and the cold-start SFT (a hundred-odd examples, vision tower
frozen as in production) cannot teach it to: it learns the answer format and a prior. Here it
learns to describe the tiny models' own synthetic videos (never the run's corpus) event by
event with their times, in the very sentence the SFT reasoning starts with ("The video shows
... from S to E seconds."), vision tower included. The SQR heads are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from config.schema import TinyPolicyPretrainConfig, VideoConfig
from corpus.synth import SynthCorpus, Video, scenes_of, splits_of
from corpus.video import decode_video
from learner.batch import Row, collate
from learner.losses import sft_token_loss
from learner.sft_data import moment_sentence
from models.fit import fit
from models.loading import load_policy, load_processor
from rollout.prompts import CAPTION_PROMPT, hf_prompt_inputs


@dataclass
class PolicyPretrainReport:
    steps: int
    first_loss: float
    last_loss: float
    heldout_videos: int
    heldout_loss_before: float  # caption cross-entropy on the pretraining corpus's test split
    heldout_loss_after: float


def caption(scene: Video) -> str:
    """The scene's events in time order, each as the SFT's 'matched' reasoning sentence."""
    return " ".join(moment_sentence(scene.describe(e), e.start_s, e.end_s)
                    for e in sorted(scene.events, key=lambda e: e.start_s))


def caption_row(processor, scene: Video, frames) -> Row:
    messages = [{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": CAPTION_PROMPT}]}]
    enc = hf_prompt_inputs(processor, messages, frames)
    prompt = enc["input_ids"][0].tolist()
    target = processor.tokenizer(caption(scene) + "<|im_end|>", add_special_tokens=False).input_ids
    return Row(ids=prompt + target, mask=[0] * len(prompt) + [1] * len(target),
               video={k: enc[k] for k in ("pixel_values_videos", "video_grid_thw")})


def pretrain_policy(policy_dir: Path, corpus: SynthCorpus, video: VideoConfig,
                    pcfg: TinyPolicyPretrainConfig, seed: int,
                    progress: bool = True) -> PolicyPretrainReport:
    """Trains the policy saved in policy_dir in place and saves its weights back."""
    if pcfg.steps < 1:
        raise ValueError("policy pretraining needs steps >= 1")
    processor = load_processor(policy_dir)
    model, _ = load_policy(policy_dir)
    merge = model.config.vision_config.spatial_merge_size
    scenes = scenes_of(corpus)
    split = splits_of(corpus)
    rows = {}
    for r in pq.read_table(corpus.videos_path).to_pylist():
        frames = decode_video(corpus.out_dir / r["path"], video.fps, video.max_frames,
                              video.max_pixels, video.min_pixels)
        rows[r["video_id"]] = caption_row(processor, scenes[r["video_id"]], frames)
    heldout = sorted(v for v in rows if split.get(v) == "test")
    train = sorted(v for v in rows if split.get(v) != "test")
    if not heldout or len(train) < pcfg.batch_size:
        raise ValueError(f"policy pretraining: {len(rows)} videos are too few for batches of "
                         f"{pcfg.batch_size} plus a test split")

    def loss_of(ids: list[str]) -> torch.Tensor:
        batch = collate([rows[v] for v in ids], processor, merge, model.device)
        logits = model(**batch.inputs, use_cache=False).logits
        return sft_token_loss(logits[:, :-1], batch.labels, batch.mask)

    def heldout_loss() -> float:
        model.eval()
        with torch.no_grad():
            out = float(np.mean([loss_of(heldout[i:i + pcfg.batch_size]).item()
                                 for i in range(0, len(heldout), pcfg.batch_size)]))
        model.train()
        return out

    before = heldout_loss()
    model.train().requires_grad_(True)
    rng = np.random.default_rng(seed)
    losses = fit(model.parameters(),
                 lambda: loss_of([train[i] for i in rng.choice(len(train), size=pcfg.batch_size,
                                                               replace=False)]),
                 steps=pcfg.steps, lr=pcfg.lr, warmup_steps=pcfg.warmup_steps,
                 desc="pretrain tiny policy", progress=progress)
    after = heldout_loss()
    model.eval().requires_grad_(False)
    model.save_pretrained(policy_dir, safe_serialization=True)
    return PolicyPretrainReport(pcfg.steps, losses[0], losses[-1], len(heldout), before, after)
