"""The SQR oracle on the session's tiny embedder and synthetic corpus."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluation.sqr_oracle import sqr_oracle


@pytest.fixture(scope="module")
def queries(synth):
    return [(r["text"], r["video_id"]) for r in pq.read_table(synth.queries_path).to_pylist()][:24]


def test_zero_steps_is_the_text_search_and_its_next_result(embedder, synth_embeddings, queries):
    ids, vectors = synth_embeddings
    text = embedder.encode_queries([t for t, _ in queries]).numpy()
    top1 = [ids[i] for i in (text @ vectors.T).argmax(1)]
    missed = sum(t != v for t, (_, v) in zip(top1, queries, strict=True))
    r = sqr_oracle(embedder, queries, ids, vectors, num_tokens=8, num_negatives=3, steps=0)
    assert r.refined_turns == missed > 0
    # soft inputs of zero search exactly as the text: the best unseen video is the next one
    assert r.vr_oracle == pytest.approx(r.vr_next)
    assert r.rank_after == pytest.approx(r.rank_before) and r.rank_before > 1
    assert r.infonce_after == pytest.approx(r.infonce_before)


def test_optimising_the_soft_inputs_lowers_their_infonce(embedder, synth_embeddings, queries):
    ids, vectors = synth_embeddings
    r = sqr_oracle(embedder, queries, ids, vectors, num_tokens=8, num_negatives=3, steps=15)
    assert r.infonce_after < r.infonce_before
    assert 0.0 <= r.vr_oracle <= 100.0 and np.isfinite(r.rank_after)
