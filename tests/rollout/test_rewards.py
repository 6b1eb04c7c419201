import math

import pytest

from config.schema import RewardConfig
from models.parsing import format_response, parse_response
from rollout.rewards import (
    RewardParts,
    episode_total,
    format_reward,
    grounding_reward,
    infonce_loss,
    retrieval_reward,
    temporal_iou,
    total_reward,
    verification_reward,
)

MATCHED = parse_response(format_response("matched", "cat", 5, 15))
NOT_MATCHED = parse_response(format_response("not_matched", "no cat"))
NO_ANSWER = parse_response("<think>hmm</think> <REFINE>")


@pytest.mark.parametrize(
    "pred, gt, iou",
    [
        ((0, 10), (5, 15), 1 / 3),  # inter 5, union 10 + 10 - 5 = 15
        ((10, 0), (5, 15), 0.0),  # reversed prediction: no moment
        ((0, 10), (15, 5), 0.0),  # reversed ground truth: no moment
        ((2, 4), (0, 10), 0.2),  # contained: 2 / 10
        ((0, 10), (0, 10), 1.0),
        ((0, 5), (5, 10), 0.0),  # touching
        ((0, 1), (7, 9), 0.0),
        ((5, 5), (0, 10), 0.0),  # zero-length prediction
        ((5, 5), (5, 5), 0.0),  # both degenerate: union 0
        ((math.nan, 10), (0, 10), 0.0),
        ((0, math.inf), (0, 10), 0.0),
        ((None, 10), (0, 10), 0.0),
        (("a", 10), (0, 10), 0.0),
        ((10**400, 1), (0, 10), 0.0),  # overflows float()
        ((1, 2, 3), (0, 10), 0.0),
        (None, (0, 10), 0.0),
    ],
)
def test_temporal_iou(pred, gt, iou):
    assert temporal_iou(pred, gt) == pytest.approx(iou)


def test_format_reward():
    assert format_reward(MATCHED) == 1.0
    assert format_reward(NOT_MATCHED) == 1.0
    # think ok, refine ok, times not ok (no answer): 2/3
    assert format_reward(NO_ANSWER) == pytest.approx(2 / 3)
    no_think = parse_response("<answer>not_matched</answer> <REFINE>")
    assert format_reward(no_think) == pytest.approx(2 / 3)
    assert format_reward(parse_response("garbage")) == 0.0


@pytest.mark.parametrize(
    "parsed, is_gt, reward",
    [
        (MATCHED, True, 1.0),
        (MATCHED, False, -1.0),
        (NOT_MATCHED, False, 1.0),
        (NOT_MATCHED, True, -1.0),
        (NO_ANSWER, True, -1.0),
        (NO_ANSWER, False, -1.0),
    ],
)
def test_verification_reward(parsed, is_gt, reward):
    assert verification_reward(parsed, is_gt) == reward


def test_grounding_reward():
    assert grounding_reward(MATCHED, True, (0, 10)) == pytest.approx(1 / 3)
    assert grounding_reward(MATCHED, False, (0, 10)) == 0.0
    assert grounding_reward(NOT_MATCHED, True, (0, 10)) == 0.0
    assert grounding_reward(NO_ANSWER, True, (0, 10)) == 0.0
    reversed_span = parse_response(
        "<think>t</think><answer>matched</answer><start>10</start><end>0</end><REFINE>"
    )
    assert grounding_reward(reversed_span, True, (0, 10)) == 0.0  # invalid span earns nothing


def test_infonce_by_hand():
    # s+ = 0.5, s- = (0.2, -0.1), tau = 0.1 -> logits 5, 2, -1
    # L = -log(e^5 / (e^5 + e^2 + e^-1)) = log(1 + e^-3 + e^-6) ≈ 0.050946
    expected = math.log(1 + math.exp(-3) + math.exp(-6))
    assert infonce_loss(0.5, [0.2, -0.1], 0.1) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.050946, abs=1e-6)
    assert retrieval_reward(0.5, [0.2, -0.1], 0.1) == pytest.approx(
        1 / (1 + math.exp(-3) + math.exp(-6))
    )


def test_infonce_stable_at_small_tau():
    # logits 1000, 900, 800: naive exp overflows; L = log(1 + e^-100 + e^-200)
    assert infonce_loss(1.0, [0.9, 0.8], 1e-3) == pytest.approx(math.exp(-100), rel=1e-9)
    # positive far below a negative: L = 2000 + log(1 + e^-2000) = 2000
    assert infonce_loss(-1.0, [1.0], 1e-3) == pytest.approx(2000.0)
    assert retrieval_reward(-1.0, [1.0], 1e-3) == 0.0


def test_infonce_edge_cases():
    assert infonce_loss(0.3, [], 0.1) == 0.0  # no negatives: the positive is certain
    assert infonce_loss(0.3, [0.3], 1.0) == pytest.approx(math.log(2))
    for tau in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            infonce_loss(0.3, [0.1], tau)


def test_retrieval_improvement():
    refined = 1 / (1 + math.exp(-3) + math.exp(-6))
    # baseline s+ = 0.2, s- = (0.2, -0.1): logits 2, 2, -1 -> exp(-L) = 1 / (2 + e^-3)
    baseline = 1 / (2 + math.exp(-3))
    got = retrieval_reward(0.5, [0.2, -0.1], 0.1, 0.2, [0.2, -0.1], improvement=True)
    assert got == pytest.approx(refined - baseline)
    worse = retrieval_reward(0.2, [0.2, -0.1], 0.1, 0.5, [0.2, -0.1], improvement=True)
    assert worse == pytest.approx(baseline - refined) and worse < 0
    # baselines are ignored unless improvement is asked for
    assert retrieval_reward(0.5, [0.2, -0.1], 0.1, 0.2, [0.2]) == pytest.approx(refined)
    with pytest.raises(ValueError):
        retrieval_reward(0.5, [0.2], 0.1, improvement=True)


def test_total_reward_default_weights():
    w = RewardConfig()  # format 0.5, verification 1, retrieval 0.5, grounding 1
    parts = RewardParts(format=1.0, verification=1.0, retrieval=0.4, grounding=0.5)
    assert parts.weighted(w) == pytest.approx(
        {"format": 0.5, "verification": 1.0, "retrieval": 0.2, "grounding": 0.5, "found": 0.0}
    )
    found = RewardParts(format=1.0, verification=1.0, retrieval=None, grounding=0.5, found=True)
    assert total_reward(found, w) == pytest.approx(2.0 + w.found)
    assert total_reward(parts, w) == pytest.approx(2.2)
    no_refine = RewardParts(format=1.0, verification=1.0, retrieval=None, grounding=0.5)
    assert no_refine.weighted(w)["retrieval"] == 0.0
    assert total_reward(no_refine, w) == pytest.approx(2.0)


def test_total_reward_custom_weights_end_to_end():
    w = RewardConfig(format=0.0, verification=2.0, retrieval=1.0, grounding=3.0)
    parsed = MATCHED
    parts = RewardParts(
        format=format_reward(parsed),
        verification=verification_reward(parsed, True),
        retrieval=retrieval_reward(0.5, [0.2, -0.1], 0.1),
        grounding=grounding_reward(parsed, True, (0, 10)),
    )
    expected = 2.0 * 1 + 1.0 / (1 + math.exp(-3) + math.exp(-6)) + 3.0 / 3
    assert total_reward(parts, w) == pytest.approx(expected)


def test_episode_total_cannot_dilute_a_wrong_judgement():
    w = RewardConfig()  # format 0.5, verification 1, retrieval 0.5, grounding 1
    rejected_gt = RewardParts(format=1.0, verification=-1.0, retrieval=0.4, grounding=0.0)
    rejected_wrong = RewardParts(format=1.0, verification=1.0, retrieval=0.2, grounding=0.0)
    last = RewardParts(format=1.0, verification=1.0, retrieval=None, grounding=0.0)
    diluted = episode_total([rejected_gt, rejected_wrong, last], w)
    assert diluted == pytest.approx(0.5 - 1.0 + 0.5 * 0.6 / 3)  # worst verdict: -1
    accepted = RewardParts(format=1.0, verification=1.0, retrieval=None, grounding=0.6, found=True)
    assert episode_total([accepted], w) == pytest.approx(0.5 + 1.0 + 0.6 + w.found)
    refined_then_found = episode_total([rejected_wrong, accepted], w)
    assert refined_then_found == pytest.approx(0.5 + 1.0 + 0.5 * 0.2 / 2 + 0.6 + w.found)
    assert min(episode_total([accepted], w), refined_then_found) > diluted
    assert episode_total([], w) == 0.0


def test_rejecting_everything_scores_below_finding_with_a_weak_verifier():
    """Top-1 right for one query in three. Rejecting everything is right on 7 of 9 verdicts;
    accepting every top-1 finds one moment and accepts two wrong videos. Without the found
    term the first wins (what GRPO learnt); with it, finding the moment does."""
    reject_gt = RewardParts(format=1.0, verification=-1.0, retrieval=0.0, grounding=0.0)
    reject_wrong = RewardParts(format=1.0, verification=1.0, retrieval=0.0, grounding=0.0)
    accept_gt = RewardParts(format=1.0, verification=1.0, retrieval=None, grounding=0.2, found=True)
    accept_wrong = RewardParts(format=1.0, verification=-1.0, retrieval=None, grounding=0.0)

    def scores(w):
        reject_all = (episode_total([reject_gt, reject_wrong, reject_wrong], w)
                      + 2 * episode_total([reject_wrong] * 3, w)) / 3
        accept_all = (episode_total([accept_gt], w) + 2 * episode_total([accept_wrong], w)) / 3
        return reject_all, accept_all

    reject_all, accept_all = scores(RewardConfig(found=0.0))
    assert reject_all > accept_all
    reject_all, accept_all = scores(RewardConfig())
    assert accept_all > reject_all
