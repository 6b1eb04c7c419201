"""What Soft Query Refinement could find at best: free soft-token inputs, optimised per query
by gradient against the frozen embedder, and the search they make.

For each query whose text search did not put the ground truth first (the turns a correct
verifier rejects and refines), N soft inputs in the embedder's input space start at zero (the
text query exactly, by the residual read-out of `Embedder.encode_queries`) and descend the
SFT's InfoNCE: the ground truth against the same hard negatives (the text search's top
results but the one already shown). The refined search's first video not shown yet is
compared with the text search's next one (`VR@next`). If even these oracle inputs rarely find
the ground truth, the embedder and corpus give a learned refinement nothing to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learner.losses import info_nce


@dataclass
class OracleResult:
    refined_turns: int  # queries whose text search's top-1 was wrong
    vr_next: float  # % of them whose text search ranked the ground truth second
    vr_oracle: float  # % whose oracle-refined search puts it first among unseen videos
    rank_before: float  # mean 1-based rank of the ground truth, text search
    rank_after: float  # the same, oracle-refined search
    infonce_before: float
    infonce_after: float


def oracle_soft_inputs(embedder, texts: list[str], positives: torch.Tensor,
                       negatives: torch.Tensor, num_tokens: int, steps: int, lr: float,
                       tau: float) -> tuple[torch.Tensor, float, float]:
    """(soft inputs [B, N, D_emb], InfoNCE at the start, at the end), Adam from zero."""
    soft = torch.zeros(len(texts), num_tokens, embedder.dim, requires_grad=True)
    opt = torch.optim.Adam([soft], lr=lr)
    losses = []
    for _ in range(steps + 1):
        q = embedder.encode_queries(texts, soft, projector=nn.Identity())
        loss = info_nce(q, positives, negatives, tau)
        losses.append(loss.item())
        if len(losses) > steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return soft.detach(), losses[0], losses[-1]


def _ranks(queries: np.ndarray, vectors: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """1-based rank of each query's ground-truth row among all vectors (cosine)."""
    scores = queries @ vectors.T
    return 1 + (scores > scores[np.arange(len(gt)), gt][:, None]).sum(1)


def sqr_oracle(embedder, queries: list[tuple[str, str]], ids: list[str], vectors: np.ndarray,
               num_tokens: int, num_negatives: int, steps: int = 300, lr: float = 0.002,
               tau: float = 0.1, batch: int = 32) -> OracleResult:
    """`queries`: (text, ground-truth video id); `ids`/`vectors`: the index, unit vectors;
    `num_negatives` at most the corpus's videos but the ground truth and the shown one."""
    num_negatives = min(num_negatives, len(ids) - 2)
    row = {v: i for i, v in enumerate(ids)}
    texts = [t for t, _ in queries]
    gt = np.array([row[v] for _, v in queries])
    with torch.no_grad():
        text_q = embedder.encode_queries(texts).numpy()
    order = np.argsort(-(text_q @ vectors.T), axis=1)
    wrong = np.flatnonzero(order[:, 0] != gt)
    if not len(wrong):
        return OracleResult(0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
    refined, before, after = [], [], []
    for start in range(0, len(wrong), batch):
        part = wrong[start:start + batch]
        # the shown top-1 is no negative: the refined search never shows it again (as in SFT)
        negs = np.stack([[i for i in order[q][1:] if i != gt[q]][:num_negatives] for q in part])
        soft, b, a = oracle_soft_inputs(
            embedder, [texts[q] for q in part], torch.from_numpy(vectors[gt[part]]),
            torch.from_numpy(vectors[negs]), num_tokens, steps, lr, tau)
        with torch.no_grad():
            refined.append(embedder.encode_queries([texts[q] for q in part], soft,
                                                   projector=nn.Identity()).numpy())
        before.append(b * len(part))
        after.append(a * len(part))
    refined_q = np.concatenate(refined)
    scores = refined_q @ vectors.T
    scores[np.arange(len(wrong)), order[wrong, 0]] = -np.inf  # the video already shown
    hits_oracle = scores.argmax(1) == gt[wrong]
    hits_next = order[wrong, 1] == gt[wrong]
    n = len(wrong)
    return OracleResult(
        refined_turns=n, vr_next=100.0 * hits_next.mean(), vr_oracle=100.0 * hits_oracle.mean(),
        rank_before=float(_ranks(text_q[wrong], vectors, gt[wrong]).mean()),
        rank_after=float(_ranks(refined_q, vectors, gt[wrong]).mean()),
        infonce_before=sum(before) / n, infonce_after=sum(after) / n)
