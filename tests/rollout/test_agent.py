"""The agent loop against the real tiny policy on vLLM and a real FAISS index over the
synthetic corpus (in-process; the Ray actors are thin wrappers of the same objects)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch

from config.schema import IndexType, RetrievalConfig
from rollout.agent import SearchResult, _negatives, run_episode

pytestmark = pytest.mark.slow


class LocalRetriever:
    """RetrieverClient over an Embedder and one exact FAISS shard."""

    def __init__(self, embedder, shard):
        self.embedder, self.shard = embedder, shard
        self.searches: list[bool] = []  # soft tokens given?

    async def search(self, text, soft_tokens, k):
        soft = None if soft_tokens is None else torch.from_numpy(np.asarray(soft_tokens))[None]
        with torch.no_grad():
            vec = self.embedder.encode_queries([text], soft).numpy()
        scores, ids = self.shard.search(vec, k)
        self.searches.append(soft_tokens is not None)
        return SearchResult(vec[0], ids[0].tolist(), scores[0].tolist())

    async def score(self, vector, video_ids):
        return self.shard.score(np.asarray(vector)[None], [video_ids])[0].tolist()

    async def vectors(self, video_ids):
        return self.shard.vectors(video_ids)


@pytest.fixture(scope="module")
def world(cfg, model_dirs, synth):
    from corpus.tables import load_corpus
    from corpus.video import decode_video
    from retrieval_service.embedder import Embedder
    from retrieval_service.index import Shard
    from rollout.policy import LocalPolicy

    corpus = load_corpus(synth.videos_path, synth.queries_path)
    embedder = Embedder(model_dirs[1], model_dirs[0], "float32", cfg.model.embed_instruction, cfg.video)
    ids = sorted(corpus.video_paths)
    v = cfg.video
    vecs = np.concatenate([
        embedder.encode_videos([decode_video(corpus.video_path(i), v)]) for i in ids])
    shard = Shard.build(vecs, ids, RetrievalConfig(index_type=IndexType.flat))
    policy = LocalPolicy(cfg, str(model_dirs[0]))
    yield corpus, LocalRetriever(embedder, shard), policy
    policy.shutdown()


class Rejecting:
    """The real policy with its verdict replaced by a parseable not_matched, which a random
    tiny policy rarely writes: its 8-token responses end in <REFINE> (written at the cap, as
    bench/rollout.py does), so the refinement path runs on real soft tokens, captured in the
    turn's own request."""

    TEXT = "<think>None of them is the query.</think> <answer>not_matched</answer> <REFINE>"

    def __init__(self, policy):
        self.policy = policy

    def _params(self, seed, greedy):
        from rollout.slot_forcing import trigger_at_cap

        p = self.policy
        return trigger_at_cap(p.engine.sampling_params(
            replace(p.cfg.rollout.sampling, max_tokens=8), p.stop_ids, seed=seed, greedy=greedy,
            banned_token_ids=p.banned_ids, capture_after=p.refine_id))

    async def generate(self, *args, **kwargs):
        self.policy.sampling_params = self._params  # this instance only, for this call
        try:
            out = await self.policy.generate(*args, **kwargs)
        finally:
            del self.policy.sampling_params
        return replace(out, text=self.TEXT)


def _wrong_top1_query(corpus, retriever):
    for q in corpus.queries("test"):
        first = asyncio.run(retriever.search(q.text, None, 10))
        if first.video_ids[0] != q.video_id:
            return q, first
    pytest.fail("the untrained embedder got every test query right")


def test_unparseable_output_ends_the_episode_without_refining(cfg, world):
    corpus, retriever, policy = world
    q, _ = _wrong_top1_query(corpus, retriever)
    retriever.searches.clear()
    turns = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, cfg, seed=1))
    if turns[0].answer is not None:  # possible for a random policy, if unlikely
        pytest.fail(f"random policy wrote a verdict: {turns[0].response_text!r}")
    assert len(turns) == 1 and turns[0].is_final and retriever.searches == [False]
    assert turns[0].soft_tokens == [] and turns[0].reward_verification == -1.0


def test_refined_negatives_are_the_search_results_but_the_ground_truth():
    """The rejected videos are already out of the refined result (`_unseen`): never negatives."""
    result = SearchResult(np.zeros(2), ["a", "gt", "b", "c"], [0.9, 0.8, 0.7, 0.6])
    assert _negatives(result, "gt", 2) == ["a", "b"]
    assert _negatives(result, "gt", 9) == ["a", "b", "c"]


def test_wrong_top1_leads_to_soft_tokens_refined_search_and_a_second_turn(cfg, world):
    corpus, retriever, real_policy = world
    policy = Rejecting(real_policy)
    two_turns = replace(cfg, rollout=replace(cfg.rollout, max_turns=2))
    q, first = _wrong_top1_query(corpus, retriever)
    retriever.searches.clear()
    turns = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, two_turns, seed=1))
    assert turns[0].video_id == first.video_ids[0] != q.video_id
    assert turns[0].answer == "not_matched" and turns[0].reward_verification == 1.0
    assert len(turns) == 2 and [t.turn for t in turns] == [1, 2]
    assert retriever.searches == [False, True]  # the second search used soft tokens
    assert turns[1].video_id != turns[0].video_id  # the rejected video is not shown again
    soft = np.asarray(turns[0].soft_tokens)
    assert soft.shape == (cfg.sqr.num_tokens, real_policy.heads.cfg.soft_dim) and np.isfinite(soft).all()
    assert len(turns[0].refined_scores) == 1 + cfg.learner.infonce_negatives
    assert 0.0 < turns[0].reward_retrieval <= 1.0
    for t in turns:
        assert t.loss_mask == [0] * len(t.prompt_ids) + [1] * len(t.response_ids)
        assert len(t.sampling_logprobs) == len(t.response_ids) > 0
        assert t.episode_id == f"{q.query_id}#0"
    assert [t.is_final for t in turns] == [False, True]
    assert turns[1].soft_tokens == []  # the final turn does not refine
    w = cfg.reward  # episode reward: mean format and retrieval, worst verification, last grounding
    expected = (w.format * (turns[0].reward_format + turns[1].reward_format) / 2
                + w.verification * min(t.reward_verification for t in turns)
                + w.retrieval * turns[0].reward_retrieval / 2 + w.grounding * turns[1].reward_grounding)
    assert [t.episode_reward for t in turns] == pytest.approx([expected, expected])


def test_trajectory_records_round_trip_through_arrow(cfg, world):
    from rollout.trajectory import table_to_turns, turns_to_table

    corpus, retriever, policy = world
    q = corpus.queries("test")[0]
    turns = asyncio.run(run_episode(q, 3, Rejecting(policy), retriever, corpus.video_path, cfg,
                                    seed=5))
    assert len(turns) == cfg.rollout.max_turns and turns[0].soft_tokens
    back = table_to_turns(turns_to_table(turns))
    assert [t.response_ids for t in back] == [t.response_ids for t in turns]
    assert [t.loss_mask for t in back] == [t.loss_mask for t in turns]
    np.testing.assert_allclose(np.asarray(back[0].soft_tokens, np.float32).ravel(),
                               np.asarray(turns[0].soft_tokens, np.float32).ravel())


def test_many_episodes_in_flight_do_not_lock_step(cfg, world):
    """Episodes run concurrently on one engine: the total time is far below the sum of
    episode times."""
    import time

    corpus, retriever, policy = world
    queries = corpus.queries("test")[:4]

    async def timed(q, g):
        start = time.perf_counter()
        turns = await run_episode(q, g, policy, retriever, corpus.video_path, cfg, seed=g)
        return time.perf_counter() - start, turns

    async def all_of_them():
        return await asyncio.gather(*[timed(q, g) for q in queries for g in range(2)])

    start = time.perf_counter()
    results = asyncio.run(all_of_them())
    wall = time.perf_counter() - start
    assert len(results) == 8 and all(turns[-1].is_final for _, turns in results)
    assert wall < 0.6 * sum(seconds for seconds, _ in results)



def test_the_latent_policy_samples_around_the_mean_and_records_its_density(cfg, world):
    from models.sqr_heads import gaussian_logprob

    corpus, retriever, real_policy = world
    policy = Rejecting(real_policy)
    latent = replace(cfg, rollout=replace(cfg.rollout, max_turns=2),
                     sqr=replace(cfg.sqr, latent_sigma=0.05))
    q, _ = _wrong_top1_query(corpus, retriever)
    turns = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, latent, seed=1))
    action, mean = np.asarray(turns[0].soft_tokens), np.asarray(turns[0].latent_mean)
    assert action.shape == mean.shape and 0 < np.abs(action - mean).max() < 0.05 * 6
    want = gaussian_logprob(torch.tensor(action[None]), torch.tensor(mean[None]), 0.05)
    assert turns[0].latent_logprob == pytest.approx(float(want), rel=1e-5)
    # GRPO's InfoNCE targets: the index's vectors of the videos the refined query was scored on
    refined = retriever.embedder.encode_queries([q.text], torch.tensor(action[None])).numpy()[0]
    vectors = np.asarray(turns[0].refined_vectors)
    assert vectors.shape == (1 + cfg.learner.infonce_negatives, refined.shape[0])
    np.testing.assert_allclose(vectors @ refined, turns[0].refined_scores, atol=1e-5)
    again = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, latent, seed=1))
    assert again[0].soft_tokens == turns[0].soft_tokens  # seeded: a retried episode draws the same
    without = replace(latent, sqr=replace(latent.sqr, latent_infonce_lambda=0.0))
    plain = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, without, seed=1))
    assert plain[0].refined_vectors == [] and plain[0].soft_tokens == turns[0].soft_tokens
    # greedy (evaluation) searches with the mean itself
    greedy = asyncio.run(run_episode(q, 0, policy, retriever, corpus.video_path, latent, seed=1,
                                     greedy=True))
    assert greedy[0].latent_mean == [] and greedy[0].latent_logprob is None
    assert greedy[0].refined_vectors == []
