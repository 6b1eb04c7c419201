"""Greedy multi-turn evaluation on a split, over the policy workers and the router."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from corpus.video import decode_video
from evaluation.episode_report import write_report
from evaluation.metrics import compute_metrics
from evaluation.predictions import predictions_table
from evaluation.refinement import place, refinement_figure, soft_spread
from evaluation.tvr import write_tvr_submission


def evaluate(session, split: str, tag: str) -> dict:
    """One greedy episode per query; writes predictions (Parquet), the TVRetrieval
    submission JSON, metrics JSON and the episode report (HTML) under <workdir>/eval/<tag>/."""
    queries = session.corpus.queries(split)
    if not queries:
        raise ValueError(f"no queries in split {split!r}")
    groups = asyncio.run(session.pool.groups(queries, 1, seed=0, greedy=True,
                                             progress=f"eval {tag}"))
    episodes = [group.episodes[0] for group in groups]
    table = predictions_table(episodes)
    out = Path(session.work) / "eval" / tag
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "predictions.parquet")
    write_tvr_submission(table, out, sorted(session.corpus.video_paths))
    metrics = compute_metrics(table)
    places = asyncio.run(_refined_places(session, episodes))
    metrics.setdefault("refinement", {}).update(refinement_figure(places), soft_spread=soft_spread(
        [t.soft_tokens for turns in episodes for t in turns if t.soft_tokens]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    final = metrics["final"]
    summary = {"queries": final["num_queries"]} | {
        k: final[k] for k in ("R1@0.5", "VER", "VR", "VR@any", "reward") if k in final}
    write_report(table, lambda vid: decode_video(session.corpus.video_path(vid), session.cfg.video).frames,
                 summary, out / "report.html", f"{tag} on the {split} split")
    return metrics


async def _refined_places(session, episodes: list[list]) -> list:
    """(turn, ground truth's place under the text query, under the refined query) for every
    refined search, each ranking over the whole index: turn t searched with the soft tokens
    turn t-1 produced, so the same search is made again with k = every video."""
    k = int(session.results["index"]["indexed"])

    async def ranking(text: str, soft) -> tuple[list[str], list[float]]:
        hits = await session.retriever.search(text, soft, k)
        return hits.video_ids, hits.scores

    async def of_episode(turns: list) -> list:
        refined = [(prev, turn) for prev, turn in zip(turns, turns[1:], strict=False) if prev.soft_tokens]
        if not refined:
            return []
        text, gt = turns[0].query_text, turns[0].gt_video_id
        before, *after = await asyncio.gather(ranking(text, None), *(
            ranking(text, np.asarray(prev.soft_tokens, np.float32)) for prev, _ in refined))
        return [(turn.turn, b, a) for (_, turn), ranked in zip(refined, after, strict=True)
                if (b := place(*before, gt)) and (a := place(*ranked, gt))]

    return [p for places in await asyncio.gather(*map(of_episode, episodes)) for p in places]
