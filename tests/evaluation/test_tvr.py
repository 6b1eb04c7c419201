"""The TVRetrieval submission: what the official evaluator needs (integer ids matching its
ground truth, never an empty prediction list, no NaN), scored by an independent
implementation of its rules, which must give the project's own R@1."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from evaluation.metrics import compute_metrics
from evaluation.tvr import MAX_PREDICTIONS, NO_VIDEO, desc_ids, write_tvr_submission

VIDEOS = [f"v{i}" for i in range(12)]


def official_recall(submission: dict, truth: list[dict], task: str, iou: float, k: int) -> float:
    """The evaluator's rules, written from its description: per query the first 100
    predictions, float32 IoU = overlap / (max end - min start) with no sorting of end points,
    the wrong video scoring 0; a hit when any of the top k reaches the threshold (VR: the
    right video among the top k)."""
    by_id = {e["desc_id"]: e for e in submission[task]}
    assert set(by_id) == {t["desc_id"] for t in truth}  # the evaluator asserts this
    hits = []
    for t in truth:
        pred = np.array([p[:3] for p in by_id[t["desc_id"]]["predictions"]][:100], dtype=np.float32)
        right = pred[:, 0] == submission["video2idx"][t["vid_name"]]
        if task == "VR":
            hits.append(right[:k].any())
            continue
        gt = np.array(t["ts"], dtype=np.float32)
        inter = np.maximum(0, np.minimum(pred[:, 2], gt[1]) - np.maximum(pred[:, 1], gt[0]))
        union = np.maximum(pred[:, 2], gt[1]) - np.minimum(pred[:, 1], gt[0])
        scores = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0) * right
        hits.append((scores[:k] >= iou).any())
    return 100.0 * float(np.mean(hits))


def _random_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for q in range(n):
        gt = rng.choice(VIDEOS)
        gs = rng.choice([0.0, 1.0, 2.5, 4.0])
        ge = gs + rng.choice([0.5, 2.0, 3.0, 6.0])
        shown = gt if rng.random() < 0.5 else rng.choice([*VIDEOS[:3], None])
        retrieved = rng.sample(VIDEOS, 5) if shown else []
        start = rng.choice([gs, gs, gs + 0.5, gs - 0.5, ge, 0.0, 9.0, float("nan"), None])
        end = rng.choice([ge, ge, ge - 0.5, ge + 1.0, gs, 12.0, 1.0, float("inf"), None])
        rows.append({"query_id": f"synth_{q:04d}:q0", "turn": 1, "query_text": f"query {q}",
                     "gt_video_id": gt, "gt_start": gs, "gt_end": ge, "video_id": shown,
                     "answer": rng.choice(["matched", "matched", "not_matched", None]),
                     "pred_start": start, "pred_end": end, "is_final": True,
                     "retrieved_ids": retrieved,
                     "retrieved_scores": [rng.choice([0.5, float("nan")]) for _ in retrieved],
                     "episode_reward": 0.0})
    return rows


def test_the_official_rules_give_the_projects_r1(tmp_path):
    rows = _random_rows(400, seed=3)
    path = write_tvr_submission(pa.Table.from_pylist(rows), tmp_path, VIDEOS)
    submission = json.loads(path.read_text())
    truth = [json.loads(line) for line in (tmp_path / "tvr_ground_truth.jsonl").read_text().splitlines()]
    ours = compute_metrics(rows, iou_thresholds=(0.5, 0.7))["final"]
    assert 0 < ours["R1@0.7"] < ours["R1@0.5"] < 60  # the sample holds hits and misses
    for iou in (0.5, 0.7):
        assert official_recall(submission, truth, "VCMR", iou, 1) == pytest.approx(ours[f"R1@{iou}"])
    assert official_recall(submission, truth, "VR", 0, 1) == pytest.approx(ours["VR"])
    for k in (5, 10, 100):  # a ranking below the first: recall can only grow with k
        assert official_recall(submission, truth, "VR", 0, k) >= official_recall(submission, truth, "VR", 0, 1)


def test_what_the_evaluator_needs_of_the_file(tmp_path):
    rows = _random_rows(60, seed=4)
    text = write_tvr_submission(rows, tmp_path, VIDEOS).read_text()
    assert "NaN" not in text and "Infinity" not in text
    sub = json.loads(text)
    assert set(sub) == {"video2idx", "VR", "VCMR"} and set(sub["video2idx"]) == set(VIDEOS)
    for task in ("VR", "VCMR"):
        for entry in sub[task]:
            assert isinstance(entry["desc_id"], int) and entry["desc"].startswith("query")
            assert 1 <= len(entry["predictions"]) <= MAX_PREDICTIONS
    nothing = [r for r in rows if r["video_id"] is None]
    assert nothing, "the sample must hold a query whose episode retrieved nothing"
    by_id = {e["desc_id"]: e for e in sub["VCMR"]}
    ids = json.loads((tmp_path / "tvr_desc_ids.json").read_text())
    assert by_id[ids[nothing[0]["query_id"]]]["predictions"] == [[NO_VIDEO, 0.0, 0.0, 0.0]]


def test_a_span_only_for_an_accepted_video_with_a_usable_span(tmp_path):
    base = {"query_id": "fig:7", "turn": 1, "query_text": "q", "gt_video_id": "v1", "gt_start": 1.0,
            "gt_end": 4.0, "video_id": "v1", "is_final": True, "retrieved_ids": ["v2", "v1", "v3"],
            "retrieved_scores": [0.9, 0.8, 0.7]}
    cases = [("matched", 1.0, 4.0, [[1, 1.0, 4.0, 0.8], [2, 0.0, 0.0, 0.9], [3, 0.0, 0.0, 0.7]]),
             ("matched", 4.0, 1.0, [[1, 0.0, 0.0, 0.8], [2, 0.0, 0.0, 0.9], [3, 0.0, 0.0, 0.7]]),
             ("not_matched", 1.0, 4.0, [[1, 0.0, 0.0, 0.8], [2, 0.0, 0.0, 0.9], [3, 0.0, 0.0, 0.7]])]
    for answer, start, end, want in cases:
        row = base | {"answer": answer, "pred_start": start, "pred_end": end}
        sub = json.loads(write_tvr_submission([row], tmp_path, VIDEOS).read_text())
        assert sub["VCMR"][0]["predictions"] == want
        assert sub["VCMR"][0]["desc_id"] == 7  # FIG's own numeric id
        assert [p[0] for p in sub["VR"][0]["predictions"]] == [1, 2, 3]


def test_desc_ids_are_the_sources_numbers_or_a_stable_index():
    assert desc_ids(["fig:12", "fig:3"]) == {"fig:12": 12, "fig:3": 3}
    assert desc_ids([5, 9]) == {5: 5, 9: 9}
    mixed = ["synth_0002:q1", "fig:3", "synth_0001:q0"]
    assert desc_ids(mixed) == {"fig:3": 0, "synth_0001:q0": 1, "synth_0002:q1": 2}
    assert desc_ids(["didemo:1", "fig:1"]) == {"didemo:1": 0, "fig:1": 1}  # numbers would clash


def test_a_video_outside_the_corpus_is_an_error(tmp_path):
    row = {"query_id": "q", "turn": 1, "gt_video_id": "v1", "video_id": "zz", "answer": None,
           "is_final": True, "retrieved_ids": ["zz"], "retrieved_scores": [0.1]}
    with pytest.raises(ValueError, match="'zz' is not in the corpus"):
        write_tvr_submission([row], tmp_path, VIDEOS)
