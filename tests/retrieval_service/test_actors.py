"""Shard actors, the query encoder and the router on a Ray cluster, against local results."""

import asyncio
import os

import numpy as np
import pytest
import ray
import torch

from actors.retrieval import RouterClient, start_retrieval
from retrieval_service.index import load_shard, merge_topk, read_manifest

pytestmark = pytest.mark.slow
TEXTS = ["a red circle moves left on a navy background", "a green triangle moves up on a gray background"]


@pytest.fixture(scope="module")
def router(ray_cluster, actor_cfg, synth_index):
    return start_retrieval(actor_cfg, synth_index)


@pytest.fixture(scope="module")
def local(synth_index):
    manifest = read_manifest(synth_index)
    return [load_shard(synth_index, i) for i in range(manifest["num_shards"])]


def local_search(shards, vecs, k):
    return merge_topk([s.search(vecs, k) for s in shards], k)


def test_search_equals_local_shards(router, local, synth_embeddings):
    vecs = synth_embeddings[1][:7]
    scores, ids = ray.get(router.search.remote(vecs, 5))
    want_s, want_i = local_search(local, vecs, 5)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_array_equal(scores, want_s)
    assert list(ids[:, 0]) == synth_embeddings[0][:7]


def test_search_text_with_and_without_soft_tokens(router, local, embedder):
    n, d = embedder.soft_shape
    soft = np.random.default_rng(0).standard_normal((2, n, d)).astype(np.float32)
    for s in (None, soft):
        vecs, scores, ids = ray.get(router.search_text.remote(TEXTS, s, 4))
        with torch.no_grad():
            want = embedder.encode_queries(TEXTS, None if s is None else torch.from_numpy(s)).numpy()
        np.testing.assert_allclose(vecs, want, atol=1e-5)
        np.testing.assert_array_equal(ids, local_search(local, want, 4)[1])


def test_score(router, synth_embeddings):
    ids, vectors = synth_embeddings
    queries = vectors[:3] + 0.1
    asked = [[ids[5], ids[0], ids[40]], [ids[1], ids[2], ids[3]], [ids[47], ids[46], ids[2]]]
    got = ray.get(router.score.remote(queries, asked))
    rows = {v: i for i, v in enumerate(ids)}
    want = np.array([[queries[b] @ vectors[rows[v]] for v in row] for b, row in enumerate(asked)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match="no_such_video"):
        ray.get(router.score.remote(queries[:1], [["no_such_video", ids[0]]]))


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_killed_shard_comes_back_with_the_same_content(router, synth_embeddings):
    vecs = synth_embeddings[1][10:20]
    before = ray.get(router.search.remote(vecs, 6))
    shard = ray.get(router.__ray_call__.remote(lambda self: self.shards[0]))
    pid = pid_of(shard)
    ray.kill(shard, no_restart=False)
    after = ray.get(router.search.remote(vecs, 6))  # waits for the restart
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert pid_of(shard) != pid
    info = ray.get(router.ready.remote())
    assert [s["videos"] for s in info["shards"]] == info["shard_counts"]


def test_concurrent_text_searches_are_coalesced_correctly(router, embedder):
    """Many single-query calls at once (the agent loop's pattern), mixed soft/plain and k."""
    n, d = embedder.soft_shape
    rng = np.random.default_rng(3)
    calls = [([f"{TEXTS[i % 2]} {i}"], rng.standard_normal((1, n, d)).astype(np.float32) if i % 3 else None,
              1 + i % 5) for i in range(12)]
    together = ray.get([router.search_text.remote(*c) for c in calls])
    for c, got in zip(calls, together, strict=True):
        alone = ray.get(router.search_text.remote(*c))
        np.testing.assert_allclose(got[0], alone[0], atol=1e-5)
        np.testing.assert_array_equal(got[2], alone[2])
        assert got[2].shape == (1, c[2])
    with pytest.raises(ValueError, match="soft_tokens must be"):
        ray.get(router.search_text.remote(["a", "b"], calls[1][1], 3))


def test_router_client_for_the_agent_loop(router, synth_embeddings):
    client = RouterClient(router)
    result = asyncio.run(client.search(TEXTS[0], None, 3))
    assert len(result.video_ids) == 3 and result.vector.shape == (synth_embeddings[1].shape[1],)
    scores = asyncio.run(client.score(result.vector, result.video_ids))
    np.testing.assert_allclose(scores, result.scores, atol=1e-6)
    vectors = asyncio.run(client.vectors(result.video_ids))  # from the shards that hold them
    np.testing.assert_allclose(vectors @ result.vector, result.scores, atol=1e-6)
    with pytest.raises(KeyError, match="nope"):
        asyncio.run(client.vectors([result.video_ids[0], "nope"]))


def test_new_heads_reach_the_encoder_and_survive_its_restart(router, embedder):
    """The learner's heads replace the initial ones; a restarted encoder gets them back."""
    n, d = embedder.soft_shape
    soft = np.random.default_rng(1).standard_normal((1, n, d)).astype(np.float32)
    before = ray.get(router.encode.remote(TEXTS[:1], soft))
    g = torch.Generator().manual_seed(0)  # trained heads: the append projector is no longer zero
    state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in embedder.heads.state_dict().items()}
    assert ray.get(router.load_heads.remote(state)) == 1
    after = ray.get(router.encode.remote(TEXTS[:1], soft))
    assert np.abs(after - before).max() > 1e-3

    encoder = ray.get(router.__ray_call__.remote(lambda self: self.encoder))
    pid = pid_of(encoder)
    ray.kill(encoder, no_restart=False)
    np.testing.assert_allclose(ray.get(router.encode.remote(TEXTS[:1], soft)), after, atol=1e-6)
    assert pid_of(encoder) != pid
    ray.get(router.load_heads.remote(embedder.heads.state_dict()))  # as the other tests expect
    np.testing.assert_allclose(ray.get(router.encode.remote(TEXTS[:1], soft)), before, atol=1e-6)


def test_a_restarted_router_rebuilds_its_engine_and_asks_for_the_heads(router, embedder,
                                                                      synth_embeddings):
    """Last in the module: the router's shards and encoder are recreated with it."""
    vecs = synth_embeddings[1][:4]
    before = ray.get(router.search.remote(vecs, 3))
    n, d = embedder.soft_shape
    soft = np.zeros((1, n, d), np.float32)
    ray.kill(router, no_restart=False)
    after = ray.get(router.search.remote(vecs, 3))
    np.testing.assert_array_equal(after[1], before[1])
    with pytest.raises(RuntimeError, match="load_heads"):
        ray.get(router.search_text.remote(TEXTS[:1], soft, 3))
    ray.get(router.load_heads.remote(embedder.heads.state_dict()))
    assert ray.get(router.search_text.remote(TEXTS[:1], soft, 3))[2].shape == (1, 3)
