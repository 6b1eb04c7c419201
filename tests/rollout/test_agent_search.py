"""What a refined search may show: never a video the episode already rejected."""

import numpy as np

from rollout.agent import SearchResult, _unseen


def result(ids):
    return SearchResult(np.zeros(2, np.float32), list(ids), [1.0 - 0.1 * i for i in range(len(ids))])


def test_rejected_videos_are_dropped_and_the_rest_keep_their_order_and_scores():
    out = _unseen(result(["a", "b", "c", "d"]), ["a", "c"], k=10)
    assert out.video_ids == ["b", "d"] and out.scores == [0.9, 0.7]


def test_the_result_is_cut_to_k_after_dropping():
    assert _unseen(result(["a", "b", "c", "d"]), ["a"], k=2).video_ids == ["b", "c"]


def test_nothing_left_keeps_the_whole_result_rather_than_an_empty_top1():
    out = _unseen(result(["a", "b"]), ["a", "b"], k=2)
    assert out.video_ids == ["a", "b"]
