import numpy as np
import pytest

from config.schema import RetrievalConfig
from retrieval_service.index import (
    Shard,
    load_shard,
    merge_topk,
    read_manifest,
    recall_at_1,
    shard_of,
    write_index,
)


def brute_force(vectors, ids, queries, k):
    """Ground truth in the documented order: score descending, then video_id ascending."""
    scores = queries @ vectors.T
    out_s, out_i = [], []
    for row in scores:
        order = np.lexsort((ids, -row))[:k]
        out_s.append(row[order])
        out_i.append(ids[order])
    return np.array(out_s), np.array(out_i)


def sharded_search(vectors, ids, queries, k, num_shards):
    rcfg = RetrievalConfig(num_shards=num_shards)
    which = shard_of(ids, num_shards)
    shards = [Shard.build(vectors[which == i], ids[which == i], rcfg) for i in range(num_shards)]
    return merge_topk([s.search(queries, k) for s in shards], k)


@pytest.fixture(scope="module")
def tied():
    """Small integer vectors: many exactly equal dot products, computed exactly in float32."""
    rng = np.random.default_rng(0)
    vectors = rng.integers(-2, 3, (300, 8)).astype(np.float32)
    vectors[100:140] = vectors[7]  # a block of duplicates: a long tie run
    ids = np.array([f"v{i:04d}" for i in rng.permutation(300)])
    queries = rng.integers(-2, 3, (40, 8)).astype(np.float32)
    queries[0] = vectors[7]
    return vectors, ids, queries


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_sharded_topk_equals_single_flat_with_ties(tied, num_shards, k):
    vectors, ids, queries = tied
    want_s, want_i = brute_force(vectors, ids, queries, k)
    single = Shard.build(vectors, ids, RetrievalConfig()).search(queries, k)
    got_s, got_i = sharded_search(vectors, ids, queries, k, num_shards)
    for s, i in (single, (got_s, got_i)):
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(s, want_s)
    wider = brute_force(vectors, ids, queries, k + 1)[0]
    assert (wider[:, k - 1] == wider[:, k]).any(), "the data must have ties across the k-th place"


def test_random_float_data_and_batch_sizes():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"video_{i}" for i in range(2000)])
    for nq in (1, 64):  # FAISS's sequential and BLAS paths
        queries = rng.standard_normal((nq, 32)).astype(np.float32)
        _, want = brute_force(vectors, ids, queries, 10)
        np.testing.assert_array_equal(sharded_search(vectors, ids, queries, 10, 3)[1], want)


def test_k_beyond_corpus_and_empty_shard():
    vectors = np.eye(4, dtype=np.float32)
    ids = np.array(["a", "b", "c", "d"])
    scores, got = merge_topk([Shard.build(vectors, ids, RetrievalConfig()).search(vectors, 9),
                              Shard.build(vectors[:0], ids[:0], RetrievalConfig()).search(vectors, 9)], 9)
    assert got.shape == (4, 4) and list(got[2]) == ["c", "a", "b", "d"]
    assert scores[2, 0] == 1 and (scores[2, 1:] == 0).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_score_is_the_dot_product(tied, kind):
    vectors, ids, queries = tied
    rng = np.random.default_rng(2)
    want_rows = rng.integers(0, len(ids), (len(queries), 6))
    asked = [[ids[j] for j in row] for row in want_rows]
    rcfg = RetrievalConfig(num_shards=3, index_type=kind)
    which = shard_of(ids, 3)
    parts = [Shard.build(vectors[which == i], ids[which == i], rcfg).score(queries, asked)
             for i in range(3)]
    stacked = np.stack(parts)
    assert (np.isfinite(stacked).sum(0) == 1).all(), "each id is scored by exactly one shard"
    got = np.nansum(stacked, axis=0)
    want = np.einsum("bd,bkd->bk", queries, vectors[want_rows])
    np.testing.assert_array_equal(got, want)
    held = [Shard.build(vectors[which == i], ids[which == i], rcfg).vectors(asked[0]) for i in range(3)]
    assert (np.isfinite(np.stack(held)[..., 0]).sum(0) == 1).all(), "each id is held by one shard"
    np.testing.assert_array_equal(np.nansum(np.stack(held), axis=0), vectors[want_rows[0]])


def test_save_load_roundtrip(tmp_path, tied):
    vectors, ids, queries = tied
    rcfg = RetrievalConfig(num_shards=2)
    manifest = write_index(tmp_path, vectors, ids, rcfg, model_id="m")
    assert read_manifest(tmp_path) == manifest and sum(manifest["shard_counts"]) == len(ids)
    loaded = [load_shard(tmp_path, i) for i in range(2)]
    np.testing.assert_array_equal(merge_topk([s.search(queries, 5) for s in loaded], 5)[1],
                                  brute_force(vectors, ids, queries, 5)[1])


def test_shard_assignment_is_stable():
    ids = [f"v{i}" for i in range(1000)]
    which = shard_of(ids, 4)
    np.testing.assert_array_equal(which[:500], shard_of(ids[:500], 4))
    assert np.bincount(which).min() > 200


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_exact(kind):
    """Clustered data (as real embeddings are) with queries near their targets."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((50, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 20000)] + 0.3 * rng.standard_normal((20000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"v{i:05d}" for i in range(20000)])
    queries = vectors[rng.integers(0, 20000, 200)] + 0.02 * rng.standard_normal((200, 64)).astype(np.float32)
    rcfg = RetrievalConfig(index_type=kind, ivf_nlist=128, ivf_nprobe=8)
    exact = Shard.build(vectors, ids, RetrievalConfig()).search(queries, 1)[1]
    approx = Shard.build(vectors, ids, rcfg).search(queries, 1)[1]
    assert recall_at_1(approx, exact) >= 0.9
