"""Contrastive pretraining of the tiny embedder, so that the embedded default has a search
engine worth refining.

The released Qwen3-VL-Embedding is trained on web-scale (text, video) pairs; a tiny model with
random weights is not: its last-token states share one direction (mean video cosine ~0.97) and
every query retrieves the same hub video. A couple of hundred steps of symmetric InfoNCE on a
synthetic corpus of its own (another seed, so never the run's corpus) make it a weak but real
retriever, which leaves the verification and refinement the policy learns something to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from config.schema import SynthConfig, TinyEmbedderPretrainConfig, VideoConfig
from corpus.synth import generate_corpus
from retrieval_service.embedder import Embedder

SEED_OFFSET = 1000  # the pretraining corpus's seed: model seed + this


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


def _r1(embedder: Embedder, videos: dict, queries: list[dict]) -> float:
    ids = sorted(videos)
    with torch.no_grad():
        v = embedder.video_vectors([videos[i] for i in ids])
        q = embedder.encode_queries([r["text"] for r in queries])
    top = (q @ v.T).argmax(dim=1).tolist()
    return float(np.mean([ids[t] == r["video_id"] for t, r in zip(top, queries, strict=True)]))


def pretrain_embedder(embedder_dir: Path, work_dir: Path, video: VideoConfig,
                      pcfg: TinyEmbedderPretrainConfig, seed: int,
                      progress: bool = True) -> PretrainReport:
    """Trains the embedder saved in embedder_dir in place and saves it back."""
    if pcfg.steps < 1:
        raise ValueError("embedder pretraining needs steps >= 1")
    corpus = generate_corpus(SynthConfig(num_videos=pcfg.num_videos, seed=seed + SEED_OFFSET), work_dir)
    rows = pq.read_table(corpus.videos_path).to_pylist()
    queries = pq.read_table(corpus.queries_path).to_pylist()
    embedder = Embedder(embedder_dir, video=video)
    decoded = {r["video_id"]: embedder.decode(work_dir / r["path"]) for r in rows}
    heldout = [q for q in queries if q["split"] == "test"]
    heldout_videos = {v: decoded[v] for v in {q["video_id"] for q in heldout}}
    train_queries: dict[str, list[str]] = {}
    for q in queries:
        if q["split"] != "test":
            train_queries.setdefault(q["video_id"], []).append(q["text"])
    train_ids = sorted(train_queries)
    if len(train_ids) < 2 or not heldout:
        raise ValueError(f"embedder pretraining needs more videos than {pcfg.num_videos}")

    before = _r1(embedder, heldout_videos, heldout)
    model = embedder.model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in tqdm(range(pcfg.steps), desc="pretrain tiny embedder", disable=not progress):
        pick = rng.choice(len(train_ids), size=min(pcfg.batch_size, len(train_ids)), replace=False)
        ids = [train_ids[i] for i in pick]
        texts = [train_queries[v][rng.integers(len(train_queries[v]))] for v in ids]
        loss = symmetric_info_nce(embedder.encode_queries(texts),
                                  embedder.video_vectors([decoded[v] for v in ids]), pcfg.tau)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    model.save_pretrained(embedder_dir, safe_serialization=True)
    return PretrainReport(pcfg.steps, losses[0], losses[-1], len(heldout), before,
                          _r1(embedder, heldout_videos, heldout))
