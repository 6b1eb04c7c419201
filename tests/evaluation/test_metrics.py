import math
import random

import pyarrow as pa
import pytest

from evaluation.metrics import compute_metrics


def row(qid, turn, gt, pred, answer, span, final, gt_span=(0.0, 10.0), **extra):
    ps, pe = span if span else (None, None)
    return {
        "query_id": qid,
        "turn": turn,
        "gt_video_id": gt,
        "gt_start": gt_span[0],
        "gt_end": gt_span[1],
        "video_id": pred,
        "answer": answer,
        "pred_start": ps,
        "pred_end": pe,
        "is_final": final,
        **extra,
    }


# Toy table, worked by hand (gt span (0, 10) unless given):
# q1 t1: wrong video v9, not_matched                 -> VR 0, VER 1, R 0
# q1 t2: right video, matched (5, 15), IoU 1/3 FINAL  -> VR 1, VER 1, R@.3 only
# q2 t1: right video, matched (0, 10) vs gt (1, 10): IoU 9/10 FINAL -> VR 1, VER 1, R all
# q3 t1: wrong video v7, matched, perfect span        -> VR 0, VER 0, R 0 (wrong video)
# q3 t2: wrong video v8, no answer FINAL               -> VR 0, VER 0 (None is wrong), R 0
# q4 t1: right video, not_matched                     -> VR 1, VER 0, R 0
# q4 t2: right video, matched (0, 20), IoU exactly 0.5 FINAL -> VR 1, VER 1, R@.3 R@.5
ROWS = [
    row("q1", 1, "v1", "v9", "not_matched", None, False),
    row("q1", 2, "v1", "v1", "matched", (5.0, 15.0), True),
    row("q2", 1, "v2", "v2", "matched", (0.0, 10.0), True, gt_span=(1.0, 10.0)),
    row("q3", 1, "v3", "v7", "matched", (0.0, 10.0), False),
    row("q3", 2, "v3", "v8", None, None, True),
    row("q4", 1, "v4", "v4", "not_matched", None, False),
    row("q4", 2, "v4", "v4", "matched", (0.0, 20.0), True),
]
# final (q1, q2, q3, q4): R@.3 = 3/4, R@.5 = 2/4 (q2, q4), R@.7 = 1/4 (q2), VER 3/4, VR 3/4;
# ground truth shown at some turn: q1, q2, q4 = 3/4
FINAL = {"R1@0.3": 75.0, "R1@0.5": 50.0, "R1@0.7": 25.0, "VER": 75.0, "VR": 75.0, "VR@any": 75.0,
         "num_queries": 4}
# turn 1 (q1..q4 first rows): VR q2, q4 = 2/4; VER q1, q2 = 2/4; R only q2 = 1/4
TURN1 = {"R1@0.3": 25.0, "R1@0.5": 25.0, "R1@0.7": 25.0, "VER": 50.0, "VR": 50.0, "num_queries": 4}
# turn 2 (q1, q3, q4): VR q1, q4; VER q1, q4; R@.3 q1, q4; R@.5 q4; R@.7 none
TURN2 = {
    "R1@0.3": 200 / 3,
    "R1@0.5": 100 / 3,
    "R1@0.7": 0.0,
    "VER": 200 / 3,
    "VR": 200 / 3,
    "num_queries": 3,
}


@pytest.mark.parametrize("as_table", [False, True])
def test_toy_table(as_table):
    preds = pa.Table.from_pylist(ROWS) if as_table else ROWS
    m = compute_metrics(preds)
    assert m["final"] == pytest.approx(FINAL)
    assert set(m["per_turn"]) == {1, 2}
    assert m["per_turn"][1] == pytest.approx(TURN1)
    assert m["per_turn"][2] == pytest.approx(TURN2)


def test_custom_thresholds_and_row_order():
    m = compute_metrics(list(reversed(ROWS)), iou_thresholds=(0.1, 0.95))
    # q1 1/3, q2 0.9, q4 0.5 pass 0.1; none pass 0.95
    assert m["final"] == pytest.approx(
        {"R1@0.1": 75.0, "R1@0.95": 0.0, "VER": 75.0, "VR": 75.0, "VR@any": 75.0, "num_queries": 4}
    )


def test_iou_is_compared_with_the_threshold_as_computed():
    # (0.1, 0.3) vs (0.1, 0.5) is 0.5 on paper, 0.49999999999999994 in floats: a miss at 0.5,
    # as in the official evaluator (no tolerance turns 0.2999999999 into a hit either)
    m = compute_metrics([row("q", 1, "v", "v", "matched", (0.1, 0.3), True, gt_span=(0.1, 0.5))])
    assert m["final"]["R1@0.3"] == 100.0 and m["final"]["R1@0.5"] == 0.0


@pytest.mark.parametrize("span, gt_span, hits", [
    ((9.0, 2.0), (2.0, 9.0), (0, 0, 0)),  # reversed prediction: no moment, whatever it covers
    ((2.0, 9.0), (9.0, 2.0), (0, 0, 0)),  # reversed ground truth
    ((5.0, 5.0), (0.0, 10.0), (0, 0, 0)),  # zero-length prediction
    ((0.0, 5.0), (5.0, 10.0), (0, 0, 0)),  # touching
    ((2.0, 9.0), (2.0, 9.0), (1, 1, 1)),  # identical
    ((0.0, 3.0), (0.0, 10.0), (1, 0, 0)),  # IoU exactly 0.3 (3 / 10): a hit at 0.3
    ((0.0, 2.9999), (0.0, 10.0), (0, 0, 0)),  # just below 0.3
    ((0.0, 5.0), (0.0, 10.0), (1, 1, 0)),  # exactly 0.5
    ((0.0, 7.0), (0.0, 10.0), (1, 1, 1)),  # exactly 0.7
    ((float("nan"), 5.0), (0.0, 10.0), (0, 0, 0)),
    ((0.0, float("inf")), (0.0, 10.0), (0, 0, 0)),
    ((None, 5.0), (0.0, 10.0), (0, 0, 0)),
])
def test_vcmr_hand_cases(span, gt_span, hits):
    final = compute_metrics([row("q", 1, "v", "v", "matched", span, True, gt_span=gt_span)])["final"]
    assert tuple(final[f"R1@{t}"] / 100 for t in (0.3, 0.5, 0.7)) == hits
    assert final["VR"] == 100.0 and final["VER"] == 100.0


def test_a_span_without_matched_never_counts():
    rows = [row("q", 1, "v", "v", "not_matched", (0.0, 10.0), True),
            row("p", 1, "v", "v", None, (0.0, 10.0), True)]
    assert compute_metrics(rows)["final"]["R1@0.3"] == 0.0


def _reference_r1(rows, threshold):
    """An independent VCMR R@1: the final row's video is the ground truth, it answered
    matched, its span is finite with start <= end, and inter / union >= threshold."""
    hits = 0
    for r in rows:
        s, e, gs, ge = r["pred_start"], r["pred_end"], r["gt_start"], r["gt_end"]
        if r["video_id"] != r["gt_video_id"] or r["answer"] != "matched" or s is None:
            continue
        if not (math.isfinite(s) and math.isfinite(e)) or s > e:
            continue
        inter = max(0.0, min(e, ge) - max(s, gs))
        union = max(e, ge) - min(s, gs) if inter > 0 else (e - s) + (ge - gs)
        hits += union > 0 and inter / union >= threshold
    return 100.0 * hits / len(rows)


def test_vcmr_agrees_with_an_independent_implementation():
    rng = random.Random(7)
    rows = []
    for i in range(400):
        gs = rng.uniform(0, 20)
        ge = gs + rng.uniform(0.5, 10)
        s, e = rng.uniform(0, 30), rng.uniform(0, 30)  # a third of them reversed or so
        if rng.random() < 0.05:
            s = float("nan")
        rows.append(row(f"q{i}", 1, "v", rng.choice(["v", "v", "w"]),
                        rng.choice(["matched", "matched", "not_matched", None]), (s, e), True,
                        gt_span=(gs, ge)))
    final = compute_metrics(rows)["final"]
    for t in (0.3, 0.5, 0.7):
        assert final[f"R1@{t}"] == pytest.approx(_reference_r1(rows, t))
    assert 0 < final["R1@0.3"] < 100


def test_nulls_in_nullable_columns():
    rows = [row("q1", 1, "v", None, None, None, True, episode_reward=None),
            row("q2", 1, "v", "v", "matched", (0.0, 10.0), True, episode_reward=1.5)]
    m = compute_metrics(rows)
    assert m["final"]["VR"] == 50.0 and m["final"]["R1@0.7"] == 50.0
    assert m["final"]["reward"] == 1.5 and m["final"]["VR@any"] == 50.0


def test_missing_is_final_falls_back_to_last_turn():
    rows = [
        row("q", 1, "v", "x", "not_matched", None, False),
        row("q", 2, "v", "v", "matched", (0, 10), False),
    ]
    assert compute_metrics(rows)["final"]["R1@0.7"] == 100.0


def test_matched_without_span_is_not_a_hit():
    m = compute_metrics([row("q", 1, "v", "v", "matched", None, True)])
    assert m["final"] == pytest.approx(
        {"R1@0.3": 0.0, "R1@0.5": 0.0, "R1@0.7": 0.0, "VER": 100.0, "VR": 100.0, "VR@any": 100.0,
         "num_queries": 1}
    )


def test_ground_truth_shown_then_rejected_counts_for_vr_at_any_turn_only():
    rows = [row("q", 1, "v", "v", "not_matched", None, False),
            row("q", 2, "v", "x", "not_matched", None, True),
            row("p", 1, "w", "y", "not_matched", None, True)]
    final = compute_metrics(rows)["final"]
    assert final["VR"] == 0.0 and final["VR@any"] == 50.0


def test_reward_is_the_mean_episode_reward_over_queries():
    rows = [row("q1", 1, "v1", "v9", "not_matched", None, False, episode_reward=0.5),
            row("q1", 2, "v1", "v1", "matched", (0.0, 10.0), True, episode_reward=0.5),
            row("q2", 1, "v2", "v2", "matched", (0.0, 10.0), True, episode_reward=2.0)]
    assert compute_metrics(rows)["final"]["reward"] == pytest.approx((0.5 + 2.0) / 2)
    assert "reward" not in compute_metrics(ROWS)["final"]  # rows without rewards: no number


def test_refinement_against_the_next_unseen_result_of_the_first_search():
    # q1: first search ranks v9, v1, v5; v9 rejected; the refined search shows v1: both hit.
    # q2: ranks w9, w8, w2; w9 rejected -> refined shows w2 (hit), next would be w8 (miss);
    #     w2 rejected too -> refined shows w7 (miss), next unseen is w8 (miss).
    # q3: answered at turn 1: no refined turn.
    rows = [row("q1", 1, "v1", "v9", "not_matched", None, False, retrieved_ids=["v9", "v1", "v5"]),
            row("q1", 2, "v1", "v1", "matched", None, True, retrieved_ids=["v1", "v5"]),
            row("q2", 1, "w2", "w9", "not_matched", None, False, retrieved_ids=["w9", "w8", "w2"]),
            row("q2", 2, "w2", "w2", "not_matched", None, False, retrieved_ids=["w2", "w8"]),
            row("q2", 3, "w2", "w7", "not_matched", None, True, retrieved_ids=["w7"]),
            row("q3", 1, "u", "u", "matched", None, True, retrieved_ids=["u"])]
    ref = compute_metrics(rows)["refinement"]
    diff, low, high = ref.pop("VR_refined_minus_next")  # per turn: 0, +100 (q2 turn 2), 0
    assert ref == {"refined_turns": 3, "VR_refined": pytest.approx(200 / 3),
                   "VR_next_in_ranking": pytest.approx(100 / 3)}
    assert diff == pytest.approx(100 / 3) and 0.0 <= low <= diff <= high <= 100.0
    assert "refinement" not in compute_metrics(ROWS)  # rows without rankings: no number


def test_empty_input():
    zeros = {"R1@0.3": 0.0, "R1@0.5": 0.0, "R1@0.7": 0.0, "VER": 0.0, "VR": 0.0, "VR@any": 0.0,
             "num_queries": 0}
    empty = {"final": zeros, "final_ci": {}, "per_turn": {}, "per_query": {}}
    assert compute_metrics([]) == empty
    schema = pa.schema([("query_id", pa.string()), ("turn", pa.int64())])
    assert compute_metrics(schema.empty_table()) == empty
