"""Fixtures of the search-engine tests: the tiny embedder, the synthetic corpus embedded
directly (no Ray: the reference the pipeline and the actors are checked against), and a
small Ray cluster per test module."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def embedder(cfg, model_dirs):
    from retrieval_service.embedder import Embedder

    policy_dir, embedder_dir = model_dirs
    return Embedder(embedder_dir, policy_dir, cfg.model.dtype, cfg.model.embed_instruction, cfg.video)


@pytest.fixture(scope="session")
def synth_embeddings(synth, embedder) -> tuple[list[str], np.ndarray]:
    rows = pq.read_table(synth.videos_path).to_pylist()
    videos = [embedder.decode(synth.out_dir / r["path"]) for r in rows]
    vectors = np.concatenate([embedder.encode_videos(videos[i:i + 8]) for i in range(0, len(videos), 8)])
    return [r["video_id"] for r in rows], vectors


@pytest.fixture(scope="session")
def synth_index(cfg, model_dirs, synth_embeddings, tmp_path_factory):
    from retrieval_service.embedder import model_id
    from retrieval_service.index import write_index

    out = tmp_path_factory.mktemp("synth_index")
    mid = model_id(model_dirs[1], cfg.model.embed_instruction, cfg.video)
    write_index(out, synth_embeddings[1], synth_embeddings[0], cfg.retrieval, mid)
    return out


@pytest.fixture(scope="session")
def actor_cfg(cfg):
    """Half a CPU per actor: two shards and the encoder fit the 2-CPU test cluster."""
    return dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, cpus_per_actor=0.5))
