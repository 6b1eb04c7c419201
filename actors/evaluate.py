"""Greedy multi-turn evaluation on a split, over the policy workers and the router."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq

from corpus.video import decode_video
from evaluation.episode_report import write_report
from evaluation.metrics import compute_metrics
from evaluation.predictions import predictions_table
from evaluation.tvr import write_tvr_submission


def evaluate(session, split: str, tag: str) -> dict:
    """One greedy episode per query; writes predictions (Parquet), the TVRetrieval
    submission JSON, metrics JSON and the episode report (HTML) under <workdir>/eval/<tag>/."""
    queries = session.corpus.queries(split)
    if not queries:
        raise ValueError(f"no queries in split {split!r}")
    episodes = asyncio.run(session.pool.groups(queries, 1, session.retriever,
                                               session.corpus.video_path, seed=0, greedy=True,
                                               progress=f"eval {tag}"))
    table = predictions_table([group[0] for group in episodes])
    out = Path(session.work) / "eval" / tag
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "predictions.parquet")
    write_tvr_submission(table, out, sorted(session.corpus.video_paths))
    metrics = compute_metrics(table)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    final = metrics["final"]
    summary = {"queries": final["num_queries"]} | {
        k: final[k] for k in ("R1@0.5", "VER", "VR", "VR@any", "reward") if k in final}
    write_report(table, lambda vid: decode_video(session.corpus.video_path(vid), session.cfg.video).frames,
                 summary, out / "report.html", f"{tag} on the {split} split")
    return metrics
