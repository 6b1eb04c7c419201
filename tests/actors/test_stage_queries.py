"""Which train queries SFT and GRPO train on (train.grpo_video_fraction)."""

from __future__ import annotations

import pytest

from actors.driver import grpo_only_videos, stage_queries
from corpus.tables import Query

TRAIN = [Query(f"v{v}:q{i}", f"text {v} {i}", f"v{v}", 0.0, 1.0) for v in range(9) for i in range(2)]


def test_fraction_zero_trains_both_stages_on_every_query():
    assert grpo_only_videos(TRAIN, 0.0, seed=0) == set()
    assert stage_queries(TRAIN, "sft", 0.0, 0) == stage_queries(TRAIN, "grpo", 0.0, 0) == TRAIN


def test_the_stages_split_by_video_and_cover_the_train_split():
    sft, grpo = (stage_queries(TRAIN, stage, 1 / 3, seed=0) for stage in ("sft", "grpo"))
    sft_videos, grpo_videos = {q.video_id for q in sft}, {q.video_id for q in grpo}
    assert len(grpo_videos) == 3 and len(sft_videos) == 6
    assert not sft_videos & grpo_videos  # both queries of a video go to one stage
    assert sorted(q.query_id for q in sft + grpo) == sorted(q.query_id for q in TRAIN)


def test_the_split_follows_the_seed():
    assert grpo_only_videos(TRAIN, 1 / 3, seed=0) == grpo_only_videos(TRAIN, 1 / 3, seed=0)
    assert any(grpo_only_videos(TRAIN, 1 / 3, seed=0) != grpo_only_videos(TRAIN, 1 / 3, seed=s)
               for s in range(1, 5))


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="grpo_video_fraction"):
        grpo_only_videos(TRAIN, fraction, seed=0)


def test_a_cluster_short_of_cpus_is_told_how_to_start_the_head():
    from actors.job_checks import cpu_shortfall, required_cpus
    from config import load_config

    cfg = load_config("cpu_tiny")
    assert required_cpus(cfg) == 2 + 1 + 1 + 2  # shards, encoder, worker; the learner rank's 2
    message = cpu_shortfall(cfg, 2.0)
    assert "has 2 CPUs" in message and "ask for 6" in message and "--num-cpus=8" in message
    assert cpu_shortfall(cfg, 8.0) is None


def test_heldout_change_pairs_the_turns():
    from evaluation.bootstrap import heldout_change

    before = [{"infonce": 3.0, "ce": 1.0}, {"infonce": 2.0, "ce": 2.0}, {"infonce": 4.0, "ce": 0.0}]
    after = [{"infonce": 2.5, "ce": 0.5}, {"infonce": 1.5, "ce": 0.5}, {"infonce": 3.5, "ce": 0.5}]
    out = heldout_change(before, after)
    assert out["heldout_infonce"] == [3.0, 2.5] and out["heldout_ce"] == [1.0, 0.5]
    # every turn fell by 0.5: the paired interval is a point, though the means' spread is wide
    assert out["heldout_infonce_change"] == [-0.5, -0.5, -0.5]
    assert out["heldout_turns"] == 3


def test_heldout_report_splits_the_stage_at_the_heads_fit():
    from evaluation.bootstrap import heldout_report

    before = [{"infonce": 3.0, "ce": 1.0}, {"infonce": 2.0, "ce": 2.0}]
    stepped = [{"infonce": 2.0, "ce": 0.5}, {"infonce": 1.0, "ce": 0.5}]
    after = [{"infonce": 2.5, "ce": 0.5}, {"infonce": 1.5, "ce": 0.5}]
    whole = heldout_report(before, after, None)
    assert "heads_fit" not in whole and whole["heldout_infonce"] == [2.5, 2.0]
    split = heldout_report(before, after, stepped)
    # SFT's steps lowered it by 1, the fit raised it by 0.5: the stage's -0.5 is their sum
    assert split["heads_fit"] == {"heldout_infonce": [1.5, 2.0],
                                  "heldout_infonce_change": [0.5, 0.5, 0.5]}
    assert {k: v for k, v in split.items() if k != "heads_fit"} == whole


def test_heldout_turns_show_the_val_queries_videos_a_whole_index_search_ranks():
    import numpy as np

    from actors.driver import heldout_examples
    from corpus.tables import CorpusTables

    splits = {"t0": "train", "t1": "train", "t2": "train", "t3": "train", "v0": "val",
              "v1": "val", "x0": "test"}
    rows = [{"query_id": f"{v}:q", "text": f"a red circle moves left {v}", "video_id": v,
             "start_s": 0.0, "end_s": 1.0, "split": split} for v, split in splits.items()]
    corpus = CorpusTables("videos.parquet", "queries.parquet", {v: f"/{v}.mp4" for v in splits}, rows)
    rng = np.random.default_rng(0)
    vectors = {v: (x / np.linalg.norm(x)).astype(np.float32)
               for v, x in ((v, rng.normal(size=4)) for v in splits)}
    # the text search ranks a test video first: it is never shown, nor a negative
    topk = {"v0:q": ["x0", "t2", "v1", "t0", "v0"], "v1:q": ["v1", "t3"]}
    turns = heldout_examples(corpus, corpus.queries("val"), vectors, topk, num_negatives=3,
                             wrong_per_query=2, seed=0)
    assert sorted((e.query_id, e.video_id) for e in turns) == [
        ("v0:q", "t2"), ("v0:q", "v1"), ("v1:q", "t3")]
    for e in turns:
        negatives = {tuple(n) for n in e.negatives}
        assert tuple(vectors["x0"]) not in negatives  # no test video
        assert tuple(vectors[e.video_id]) not in negatives  # nor the rejected one
        assert np.array_equal(e.positive, vectors[e.query_id.split(":")[0]])
