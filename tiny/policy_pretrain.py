"""Caption pretraining of the tiny policy, standing in for the pretraining of the released
Qwen3-VL-2B-Instruct, which already sees colours, shapes and moments in a video.

A random tiny policy does not, and the cold-start SFT (a hundred-odd examples, vision tower
frozen as in production) cannot teach it to: it learns the answer format and a prior. Here it
learns to describe the tiny models' own synthetic videos (never the run's corpus) event by
event with their times, in the very sentence the SFT reasoning starts with ("The video shows
... from S to E seconds."), vision tower included. The SQR heads are not touched.

Each batch also holds text-only rows that teach the SFT trace's check (query words beside the
caption's, then same/differs, then the verdict) on captions already written: the comparison
needs no video, and learnt from a few SFT examples it is not (learner.sft_data says why).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from config.schema import TinyPolicyPretrainConfig, VideoConfig
from corpus.synth import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SynthCorpus,
    Video,
    describe,
    scenes_of,
    splits_of,
)
from corpus.video import DecodedVideo, decode_video
from learner.batch import Row, collate
from learner.losses import sft_token_loss
from learner.sft_data import DIFFERS, SAME, moment_sentence, reasoning, template_words
from learner.shared_prefix import suffix_logits
from models.loading import load_policy, load_processor
from models.parsing import format_response
from models.prompts import CAPTION_PROMPT, INSTRUCTION, hf_prompt_inputs
from tiny.fit import fit


@dataclass
class PolicyPretrainReport:
    steps: int
    first_loss: float
    last_loss: float
    heldout_videos: int
    heldout_loss_before: float  # caption cross-entropy on the pretraining corpus's test split
    heldout_loss_after: float
    # teacher-forced on held-out scenes' compare rows: how many "same" / "differs" words are right
    heldout_same_accuracy: float
    heldout_differs_accuracy: float
    # teacher-forced on held-out captions: how many colour / shape / motion words are right
    heldout_colour_accuracy: float
    heldout_shape_accuracy: float
    heldout_motion_accuracy: float


ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "motion": list(MOTIONS)}
ATTRIBUTE_VALUES = [(a, v) for a, vs in ATTRIBUTES.items() for v in vs]  # the probes' outputs


class PatchProbes(nn.Module):
    """A linear read-out, from each temporal patch the language model receives, of the colours,
    shapes and motions drawn in its frames (training aid, discarded): the caption loss reaches
    the vision tower only through the language model, and shapes and motions came late."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, len(ATTRIBUTE_VALUES))

    def loss(self, features: tuple[torch.Tensor, ...], grid_thw: torch.Tensor,
             shown: list[torch.Tensor]) -> torch.Tensor:
        """features: the vision tower's merged tokens per video, t-major; shown: per video
        [temporal patches, attributes] from `shown_per_patch`."""
        pooled = torch.cat([f.view(int(t), -1, f.shape[-1]).mean(1)
                            for f, t in zip(features, grid_thw[:, 0], strict=True)])
        return nn.functional.binary_cross_entropy_with_logits(self.linear(pooled), torch.cat(shown))


def shown_per_patch(scene: Video, frames: DecodedVideo, temporal_patch: int) -> torch.Tensor:
    """1 where an event drawn in one of a temporal patch's frames has that colour/shape/motion
    (synth draws an event iff start_s <= t < end_s)."""
    times = frames.timestamps  # an odd last frame is repeated into a patch of its own
    out = torch.zeros(-(-len(times) // temporal_patch), len(ATTRIBUTE_VALUES))
    for i, t in enumerate(times):
        for e in scene.events:
            if e.start_s <= t < e.end_s:
                for a in ATTRIBUTES:
                    out[i // temporal_patch, ATTRIBUTE_VALUES.index((a, getattr(e, a)))] = 1.0
    return out


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


def compare_row(processor, scene: Video, rng: np.random.Generator,
                skip: frozenset[str]) -> Row:
    """Text only: a query about one of the scene's events, half the time with one or two of its
    words changed; the scene's captions are given as already written, the check after each and
    the verdict are learnt."""
    events = sorted(scene.events, key=lambda e: e.start_s)
    event = events[rng.integers(len(events))]
    words = dict(colour=event.colour, shape=event.shape, motion=event.motion,
                 background=scene.background)
    answer = "matched" if rng.random() < 0.5 else "not_matched"
    if answer == "not_matched":
        other = dict(colour=[c for c in COLOURS if c not in {e.colour for e in events}],
                     shape=[x for x in SHAPES if x != event.shape],
                     motion=[x for x in MOTIONS if x != event.motion],
                     background=[x for x in BACKGROUNDS if x != scene.background])
        for key in rng.choice(sorted(other), size=rng.integers(1, 3), replace=False):
            words[key] = other[key][rng.integers(len(other[key]))]
    query = describe(**words)
    span = (event.start_s, event.end_s) if answer == "matched" else (None, None)
    moments = [(scene.describe(e), e.start_s, e.end_s) for e in events]
    target = format_response(answer, reasoning(query, moments, answer, skip, *span), *span)
    target += "<|im_end|>"
    given, at = [(0, len("<think>"))], 0  # character spans: "<think>" and the captions
    for sentence in (moment_sentence(*m) for m in moments):
        start = target.index(sentence, at)
        at = start + len(sentence)
        given.append((start - 1, at))  # with the space before the sentence
    messages = [{"role": "user", "content": [{"type": "text",
                                              "text": INSTRUCTION.format(query=query)}]}]
    tok = processor.tokenizer
    prompt = tok(processor.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False), add_special_tokens=False).input_ids
    enc = tok(target, add_special_tokens=False, return_offsets_mapping=True)
    learn = [int(not any(a <= lo and hi <= b for a, b in given)) for lo, hi in enc.offset_mapping]
    return Row(ids=prompt + enc.input_ids, mask=[0] * len(prompt) + learn, video=None)


def word_accuracy(logits_of: Callable[[dict], torch.Tensor], processor, rows: list[Row],
                  words: dict[str, list[str]], merge: int, batch_size: int,
                  device: str | torch.device = "cpu") -> dict[str, float]:
    """Teacher-forced: per group of words, the share of the rows' learnt tokens of that group
    the model ranks first (groups apart: in the checks most words are "same")."""
    tok = processor.tokenizer
    groups = {name: torch.tensor([tok(" " + w, add_special_tokens=False).input_ids[0] for w in ws])
              for name, ws in words.items()}
    right, total = dict.fromkeys(groups, 0), dict.fromkeys(groups, 0)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i:i + batch_size], processor, merge, device)
            hit = logits_of(batch.inputs)[:, :-1].argmax(-1) == batch.labels
            for name, ids in groups.items():
                at = torch.isin(batch.labels, ids) & (batch.mask > 0)
                right[name] += hit[at].sum().item()
                total[name] += at.sum().item()
    return {name: right[name] / max(1, total[name]) for name in groups}


def pretrain_policy(policy_dir: Path, corpus: SynthCorpus, video: VideoConfig,
                    pcfg: TinyPolicyPretrainConfig, seed: int,
                    progress: bool = True) -> PolicyPretrainReport:
    """Trains the policy saved in policy_dir in place and saves its weights back."""
    if pcfg.steps < 1:
        raise ValueError("policy pretraining needs steps >= 1")
    processor = load_processor(policy_dir)
    model, _ = load_policy(policy_dir)
    merge = model.config.vision_config.spatial_merge_size
    temporal_patch = model.config.vision_config.temporal_patch_size
    scenes = scenes_of(corpus)
    split = splits_of(corpus)
    rows, shown = {}, {}
    for r in pq.read_table(corpus.videos_path).to_pylist():
        vid = r["video_id"]
        frames = decode_video(corpus.out_dir / r["path"], video, cache=False)
        rows[vid] = caption_row(processor, scenes[vid], frames)
        shown[vid] = shown_per_patch(scenes[vid], frames, temporal_patch)
    heldout = sorted(v for v in rows if split.get(v) == "test")
    train = sorted(v for v in rows if split.get(v) != "test")
    if not heldout or len(train) < pcfg.batch_size:
        raise ValueError(f"policy pretraining: {len(rows)} videos are too few for batches of "
                         f"{pcfg.batch_size} plus a test split")

    skip = template_words([e for scene in scenes.values() for e in map(scene.describe, scene.events)])
    heldout_compare = [compare_row(processor, scenes[v], np.random.default_rng(i), skip)
                       for i, v in enumerate(heldout)]
    probes = PatchProbes(model.config.text_config.hidden_size)
    merged = []  # the vision tower's output tokens of the last forward, for the probes
    hook = model.model.visual.merger.register_forward_hook(lambda _m, _i, out: merged.append(out))

    def loss_of(batch_rows: list[Row], patches_shown: list[torch.Tensor] | None = None) -> torch.Tensor:
        batch = collate(batch_rows, processor, merge, model.device)
        merged.clear()
        logits = suffix_logits(model, batch.inputs)
        loss = sft_token_loss(logits[:, :-1], batch.labels, batch.mask)
        if patches_shown is not None:
            grid = batch.inputs["video_grid_thw"]
            features = torch.split(merged[0], (grid.prod(-1) // merge**2).tolist())
            loss = loss + pcfg.probe_weight * probes.loss(features, grid, patches_shown)
        return loss

    def heldout_loss() -> float:
        model.eval()
        with torch.no_grad():
            out = float(np.mean([loss_of([rows[v] for v in heldout[i:i + pcfg.batch_size]]).item()
                                 for i in range(0, len(heldout), pcfg.batch_size)]))
        model.train()
        return out

    before = heldout_loss()
    model.train().requires_grad_(True)
    rng = np.random.default_rng(seed)

    def step_loss() -> torch.Tensor:
        """Captions and checks in forwards of their own: the text rows are the longer ones, so
        one batch would pad every video row to them."""
        videos = [train[i] for i in rng.choice(len(train), size=pcfg.batch_size, replace=False)]
        texts = rng.choice(len(train), size=pcfg.compare_batch_size)
        return (loss_of([rows[v] for v in videos], [shown[v] for v in videos] if pcfg.probe_weight else None)
                + loss_of([compare_row(processor, scenes[train[i]], rng, skip) for i in texts]))

    losses = fit([*model.parameters(), *probes.parameters()], step_loss,
                 steps=pcfg.steps, lr=pcfg.lr, warmup_steps=pcfg.warmup_steps,
                 desc="pretrain tiny policy", progress=progress, clip=model.parameters())
    hook.remove()
    after = heldout_loss()
    model.eval().requires_grad_(False)
    logits_of = functools.partial(suffix_logits, model)
    checks = word_accuracy(logits_of, processor, heldout_compare, {"same": [SAME], "differs": [DIFFERS]},
                           merge, pcfg.batch_size, model.device)
    words = word_accuracy(logits_of, processor, [rows[v] for v in heldout], ATTRIBUTES, merge,
                          pcfg.batch_size, model.device)
    model.save_pretrained(policy_dir, safe_serialization=True)
    return PolicyPretrainReport(pcfg.steps, losses[0], losses[-1], len(heldout), before, after,
                                checks["same"], checks["differs"], words["colour"],
                                words["shape"], words["motion"])
