"""Contrastive pretraining of the tiny embedder, so that the embedded default has a search
engine worth refining.

The released Qwen3-VL-Embedding is trained on web-scale (text, video) pairs; a tiny model with
random weights is not: its last-token states share one direction (mean video cosine ~0.97) and
every query retrieves the same hub video. This trains it on the tiny models' own synthetic
corpus (another seed, never the run's corpus) into a weak but real retriever, which leaves the
verification and refinement the policy learns something to fix.

It starts from the pretrained tiny policy (as Qwen3-VL-Embedding starts from Qwen3-VL): the
policy's vision tower and language model already tell which shape and motion go with a colour,
which an embedder trained from random weights on this corpus never learnt (docs/experiments.md).
InfoNCE alone learns the background (every video token carries it) and then sits on that
plateau (loss ln(videos per background) for 600 steps, measured): the objects are a few
tokens among ~100. Linear attribute probes on the pooled vectors (video: the background, the
colours shown and which shape and motion go with each; query: its background, colour and
shape) give a direct signal and break the plateau; they are discarded afterwards. Batches
hold a few backgrounds, so most negatives share the positive's background.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from config.schema import TinyEmbedderPretrainConfig, VideoConfig
from corpus.synth import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    Event,
    SynthCorpus,
    Video,
    moments_of,
    scenes_of,
)
from retrieval_service.embedder import Embedder
from tiny.fit import fit


@dataclass
class PretrainReport:
    steps: int
    first_loss: float
    last_loss: float
    heldout_queries: int
    heldout_r1_before: float  # text -> video R@1 on the pretraining corpus's test split
    heldout_r1_after: float


def symmetric_info_nce(queries: torch.Tensor, videos: torch.Tensor, tau: float) -> torch.Tensor:
    """Row i of each is a positive pair; every other row of the batch is a negative."""
    logits = queries @ videos.T / tau
    labels = torch.arange(len(queries), device=logits.device)
    return (nn.functional.cross_entropy(logits, labels)
            + nn.functional.cross_entropy(logits.T, labels)) / 2


class AttributeProbes(nn.Module):
    """Linear read-outs of the synthetic scene from the pooled vectors (training aid only).

    The video side also reads which shape and which motion each shown colour has (one label per
    colour x shape and colour x motion pair, weighted `PAIR_WEIGHT`): colours and the
    background alone are what a contrastive batch needs most and what the vectors then hold."""

    PAIR_WEIGHT = 4.0

    def __init__(self, dim: int):
        super().__init__()
        self.colours, self.backgrounds = list(COLOURS), list(BACKGROUNDS)
        self.shapes, self.motions = list(SHAPES), list(MOTIONS)
        self.video_colours = nn.Linear(dim, len(self.colours))
        self.video_background = nn.Linear(dim, len(self.backgrounds))
        self.video_shapes = nn.Linear(dim, len(self.colours) * len(self.shapes))
        self.video_motions = nn.Linear(dim, len(self.colours) * len(self.motions))
        self.query = nn.ModuleDict({name: nn.Linear(dim, len(getattr(self, name))) for name in
                                    ("colours", "backgrounds", "shapes")})

    def loss(self, videos: torch.Tensor, queries: torch.Tensor, scenes: list[Video],
             events: list[Event]) -> torch.Tensor:
        f = nn.functional
        n = len(scenes)
        shown = torch.zeros(n, len(self.colours), device=videos.device)
        shapes = torch.zeros(n, len(self.colours), len(self.shapes), device=videos.device)
        motions = torch.zeros(n, len(self.colours), len(self.motions), device=videos.device)
        for i, scene in enumerate(scenes):
            for e in scene.events:
                c = self.colours.index(e.colour)
                shown[i, c] = 1.0
                shapes[i, c, self.shapes.index(e.shape)] = 1.0
                motions[i, c, self.motions.index(e.motion)] = 1.0

        def idx(names: list[str], values: list[str]) -> torch.Tensor:
            return torch.tensor([names.index(v) for v in values], device=videos.device)

        backgrounds = idx(self.backgrounds, [s.background for s in scenes])
        out = (f.binary_cross_entropy_with_logits(self.video_colours(videos), shown)
               + f.cross_entropy(self.video_background(videos), backgrounds)
               + self.PAIR_WEIGHT * (
                   f.binary_cross_entropy_with_logits(self.video_shapes(videos), shapes.flatten(1))
                   + f.binary_cross_entropy_with_logits(self.video_motions(videos), motions.flatten(1)))
               + f.cross_entropy(self.query["backgrounds"](queries), backgrounds))
        for name, attr in (("colours", "colour"), ("shapes", "shape")):
            out = out + f.cross_entropy(self.query[name](queries),
                                        idx(getattr(self, name), [getattr(e, attr) for e in events]))
        return out


def _r1(embedder: Embedder, videos: dict, queries: list[dict]) -> float:
    ids = sorted(videos)
    with torch.no_grad():
        v = embedder.video_vectors([videos[i] for i in ids])
        q = embedder.encode_queries([r["text"] for r in queries])
    top = (q @ v.T).argmax(dim=1).tolist()
    return float(np.mean([ids[t] == r["video_id"] for t, r in zip(top, queries, strict=True)]))


def pretrain_embedder(embedder_dir: Path, corpus: SynthCorpus, video: VideoConfig,
                      pcfg: TinyEmbedderPretrainConfig, seed: int,
                      progress: bool = True) -> PretrainReport:
    """Trains the embedder saved in embedder_dir in place and saves it back."""
    if pcfg.steps < 1:
        raise ValueError("embedder pretraining needs steps >= 1")
    rows = pq.read_table(corpus.videos_path).to_pylist()
    scenes = scenes_of(corpus)
    embedder = Embedder(embedder_dir, video=video)
    decoded = {r["video_id"]: embedder.decode(corpus.out_dir / r["path"]) for r in rows}
    # Held out: the test split's videos, asked about their events whose description no other
    # held-out video shares (in a corpus this large few are unique corpus-wide).
    moments = [m for m in moments_of(corpus) if m["split"] == "test"]
    described = Counter(m["text"] for m in moments)
    heldout = [m for m in moments if described[m["text"]] == 1]
    held_ids = {m["video_id"] for m in moments}
    by_background: dict[str, list[str]] = {}
    for vid in sorted(scenes):
        if vid not in held_ids:
            by_background.setdefault(scenes[vid].background, []).append(vid)
    per_bg = max(1, pcfg.batch_size // pcfg.backgrounds_per_batch)
    by_background = {bg: vids for bg, vids in by_background.items() if len(vids) >= per_bg}
    if not heldout or len(by_background) < pcfg.backgrounds_per_batch:
        raise ValueError(f"embedder pretraining: {corpus.num_videos} videos are too few for batches of "
                         f"{pcfg.backgrounds_per_batch} backgrounds x {per_bg} videos plus a test split")

    before = _r1(embedder, {v: decoded[v] for v in held_ids}, heldout)
    model = embedder.model.train().requires_grad_(True)
    probes = AttributeProbes(embedder.dim).to(embedder.device)
    rng = np.random.default_rng(seed)

    def next_loss() -> torch.Tensor:
        backgrounds = rng.choice(sorted(by_background), size=pcfg.backgrounds_per_batch, replace=False)
        ids = [v for bg in backgrounds for v in rng.choice(by_background[bg], size=per_bg, replace=False)]
        batch = [scenes[v] for v in ids]
        events = [s.events[rng.integers(len(s.events))] for s in batch]
        q = embedder.encode_queries([s.describe(e) for s, e in zip(batch, events, strict=True)])
        v = embedder.video_vectors([decoded[i] for i in ids])
        return symmetric_info_nce(q, v, pcfg.tau) + pcfg.probe_weight * probes.loss(v, q, batch, events)

    losses = fit([*model.parameters(), *probes.parameters()], next_loss, steps=pcfg.steps,
                 lr=pcfg.lr, warmup_steps=pcfg.warmup_steps, desc="pretrain tiny embedder",
                 progress=progress, clip=model.parameters())
    model.eval().requires_grad_(False)
    model.save_pretrained(embedder_dir, safe_serialization=True)
    return PretrainReport(pcfg.steps, losses[0], losses[-1], len(heldout), before,
                          _r1(embedder, {v: decoded[v] for v in held_ids}, heldout))
