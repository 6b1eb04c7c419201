"""The multi-turn agent loop: search -> verify -> (refine -> search again) -> ground.

Plain asyncio over two small protocols, so it runs against in-process objects in
tests and against Ray actor handles in training. Every episode is its own coroutine:
many queries and samples are in flight at once and nothing waits for the slowest
episode's next turn (no lock-step across turns).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from config.schema import Config
from corpus.tables import Query
from models.parsing import parse_response
from models.sqr_heads import gaussian_logprob, sample_latent
from rollout.rewards import (
    REWARD_PARTS,
    RewardParts,
    episode_total,
    format_reward,
    grounding_reward,
    retrieval_reward,
    total_reward,
    verification_reward,
)
from rollout.trajectory import Turn


@dataclass
class SearchResult:
    vector: np.ndarray  # the query vector that was searched
    video_ids: list[str]
    scores: list[float]


class PolicyClient(Protocol):
    """A turn in; the response, and its soft tokens when it ended in <REFINE>, out."""

    async def generate(self, query: str, video_path: str, seed: int | None, greedy: bool): ...


class RetrieverClient(Protocol):
    async def search(self, text: str, soft_tokens: np.ndarray | None, k: int) -> SearchResult: ...
    async def score(self, vector: np.ndarray, video_ids: list[str]) -> list[float]: ...
    async def vectors(self, video_ids: list[str]) -> np.ndarray: ...


def _unseen(result: SearchResult, rejected: list[str], k: int) -> SearchResult:
    """The search without the videos the episode already rejected: showing one again would
    spend a turn on a judgement already made. The untouched result if nothing else is left."""
    keep = [i for i, v in enumerate(result.video_ids) if v not in rejected][:k]
    if not keep:
        return result
    return SearchResult(result.vector, [result.video_ids[i] for i in keep],
                        [result.scores[i] for i in keep])


def _negatives(result: SearchResult, gt: str, k: int) -> list[str]:
    """Hard negatives: the refined search's top results but the ground truth. The rejected
    videos are not among them (`_unseen`) and are no negatives: the search never shows them
    again, so a refinement gains nothing by moving away from them (SFT's examples agree)."""
    return [v for v in result.video_ids if v != gt][:k]


async def run_episode(query: Query, sample: int, policy: PolicyClient, retriever: RetrieverClient,
                      video_path: Callable[[str], str], cfg: Config, *, seed: int | None = None,
                      greedy: bool = False) -> list[Turn]:
    """One episode of at most T turns; returns its turn records (the last is final).

    Only a parseable `not_matched` refines and searches again: with no verdict there is no
    action to take, so the episode ends there as a failure (otherwise GRPO rewards unparseable
    output whenever a later turn finds the video). A refined search never shows a video this
    episode rejected (`_unseen`)."""
    k, n_neg = cfg.retrieval.topk, cfg.learner.infonce_negatives
    result = await retriever.search(query.text, None, k)
    turns: list[Turn] = []
    scored: list[RewardParts] = []
    rejected: list[str] = []
    for t in range(1, cfg.rollout.max_turns + 1):
        shown = result.video_ids[0]
        gen = await policy.generate(query.text, video_path(shown), seed, greedy)
        parsed = parse_response(gen.text)
        is_gt = shown == query.video_id
        parts = RewardParts(
            format=format_reward(parsed),
            verification=verification_reward(parsed, is_gt),
            retrieval=None,
            grounding=grounding_reward(parsed, is_gt, (query.start_s, query.end_s)),
            found=is_gt and parsed.matched,
        )
        turn = Turn(
            episode_id=f"{query.query_id}#{sample}", query_id=query.query_id, sample=sample,
            turn=t, query_text=query.text, gt_video_id=query.video_id, gt_start=query.start_s,
            gt_end=query.end_s, video_id=shown, video_path=video_path(shown),
            frame_times=gen.frame_times, retrieved_ids=result.video_ids,
            retrieved_scores=[float(s) for s in result.scores], prompt_ids=gen.prompt_ids,
            response_ids=gen.response_ids, sampling_logprobs=gen.logprobs,
            response_text=gen.text, answer=parsed.answer,
            pred_start=_finite(parsed.start), pred_end=_finite(parsed.end),
            weight_version=gen.weight_version,
        )
        turns.append(turn)
        if parsed.answer != "not_matched" or t == cfg.rollout.max_turns:
            scored.append(_set_rewards(turn, parts, cfg))
            break
        soft = gen.soft_tokens  # None when the response did not end in <REFINE>: no refinement
        if soft is not None and cfg.sqr.latent_sigma > 0 and not greedy:  # the latent action
            turn.latent_mean, soft = soft.tolist(), _latent_action(soft, cfg.sqr.latent_sigma,
                                                                   query, sample, t, seed)
            turn.latent_logprob = float(gaussian_logprob(
                torch.from_numpy(soft)[None], torch.tensor([turn.latent_mean]), cfg.sqr.latent_sigma))
        rejected.append(shown)
        refined = _unseen(await retriever.search(query.text, soft, k + len(rejected)), rejected, k)
        negatives = _negatives(refined, query.video_id, n_neg)
        scores = await retriever.score(refined.vector, [query.video_id] + negatives)
        base = None
        if cfg.reward.retrieval_improvement:  # credit only what refinement added
            base = await retriever.score(result.vector, [query.video_id] + negatives)
        parts = dataclasses.replace(parts, retrieval=retrieval_reward(
            scores[0], scores[1:], cfg.learner.infonce_tau,
            baseline_pos=base[0] if base else None, baseline_negs=base[1:] if base else None,
            improvement=base is not None))
        turn.soft_tokens = [] if soft is None else soft.tolist()
        turn.refined_scores = [float(s) for s in scores]
        if turn.latent_mean and cfg.sqr.latent_infonce_lambda > 0:
            turn.refined_vectors = np.asarray(
                await retriever.vectors([query.video_id] + negatives), np.float32).tolist()
        scored.append(_set_rewards(turn, parts, cfg))
        result = refined
    turns[-1].is_final = True
    total = episode_total(scored, cfg.reward)
    for turn in turns:
        turn.episode_reward = total
    return turns


def _latent_action(mean: np.ndarray, sigma: float, query: Query, sample: int, turn: int,
                   seed: int | None) -> np.ndarray:
    """The soft tokens drawn around `mean`, seeded by the episode and turn (a retried
    episode draws the same)."""
    rng = np.random.default_rng([seed or 0, sample, turn, zlib.crc32(query.query_id.encode())])
    return sample_latent(mean, sigma, rng)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _set_rewards(turn: Turn, parts: RewardParts, cfg: Config) -> RewardParts:
    for name in REWARD_PARTS:  # unweighted, as the parts were scored
        setattr(turn, f"reward_{name}", float(getattr(parts, name) or 0.0))
    turn.reward = total_reward(parts, cfg.reward)
    return parts

