"""The video search engine on Ray: S index shard actors, a query encoder, a router.

Shards load their shard from disk in __init__, so `max_restarts` brings a killed shard back
with the same content, and read-only calls are retried across the restart. The router is
an async actor: many rollout episodes and Serve requests are in flight at once while the
shards search in parallel.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util.metrics import Histogram

from config.schema import Config
from models.loading import resolve_model_dirs
from retrieval_service.embedder import Embedder, model_id
from retrieval_service.index import load_shard, merge_topk, read_manifest
from rollout.agent import SearchResult

LATENCY_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


@ray.remote(max_restarts=-1, max_task_retries=3)
class IndexShardActor:
    def __init__(self, index_dir: str, shard: int, use_gpu: bool):
        self.shard = load_shard(index_dir, shard, use_gpu=use_gpu)

    def size(self) -> int:
        return len(self.shard)

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shard.search(vecs, k)

    def score(self, vecs: np.ndarray, video_ids: list[list[str]]) -> np.ndarray:
        return self.shard.score(vecs, video_ids)


@ray.remote(max_restarts=-1, max_task_retries=3)
class QueryEncoderActor:
    """The frozen embedder serving (text, soft tokens) -> query vectors, without gradients."""

    def __init__(self, embedder_dir: str, policy_dir: str | None, dtype: str, instruction: str):
        self.embedder = Embedder(embedder_dir, policy_dir, dtype, instruction)

    def soft_shape(self) -> tuple[int, int] | None:
        return self.embedder.soft_shape

    @torch.inference_mode()
    def encode(self, texts: list[str], soft_tokens: np.ndarray | None = None) -> np.ndarray:
        soft = None if soft_tokens is None else torch.as_tensor(soft_tokens, dtype=torch.float32)
        return self.embedder.encode_queries(texts, soft).cpu().numpy()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class RetrievalRouter:
    def __init__(self, shards: list, encoder, manifest: dict):
        self.shards, self.encoder, self.manifest = shards, encoder, manifest
        self.latency = Histogram("retrieval_seconds", "Retrieval call latency (router side).",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=("method",))

    async def ready(self) -> dict:
        """Waits for every shard (and the encoder) to be up; returns the index manifest."""
        sizes = await asyncio.gather(*[s.size.remote() for s in self.shards])
        if self.encoder is not None:
            await self.encoder.soft_shape.remote()
        return self.manifest | {"loaded_counts": list(sizes)}

    async def soft_shape(self) -> tuple[int, int] | None:
        return None if self.encoder is None else await self.encoder.soft_shape.remote()

    def _check(self, vecs) -> np.ndarray:
        vecs = np.asarray(vecs, np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.manifest["dim"]:
            raise ValueError(f"query vectors must be [B, {self.manifest['dim']}], got {vecs.shape}")
        return vecs

    def _observe(self, method: str, start: float) -> None:
        self.latency.observe(time.perf_counter() - start, tags={"method": method})

    async def search(self, vecs, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Global top-k (scores [B, k'], ids [B, k']) in (score desc, video_id asc) order."""
        start, vecs = time.perf_counter(), self._check(vecs)
        ref = ray.put(vecs)  # one copy in the object store, read by every shard
        parts = await asyncio.gather(*[s.search.remote(ref, k) for s in self.shards])
        out = merge_topk(parts, k)
        self._observe("search", start)
        return out

    async def encode(self, texts: list[str], soft_tokens: np.ndarray | None = None) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("this router has no query encoder")
        return await self.encoder.encode.remote(texts, soft_tokens)

    async def search_text(self, texts: list[str], soft_tokens: np.ndarray | None,
                          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query vectors, scores, ids): the vectors are what InfoNCE later scores."""
        start = time.perf_counter()
        vecs = await self.encode(texts, soft_tokens)
        scores, ids = await self.search(vecs, k)
        self._observe("search_text", start)
        return vecs, scores, ids

    async def score(self, vecs, video_ids: list[list[str]]) -> np.ndarray:
        """[B, K] similarities of each query with its K given videos (for InfoNCE)."""
        start, vecs = time.perf_counter(), self._check(vecs)
        if len(video_ids) != len(vecs) or len({len(row) for row in video_ids}) > 1:
            raise ValueError("video_ids must be B lists of equal length K")
        ref = ray.put(vecs)
        parts = await asyncio.gather(*[s.score.remote(ref, video_ids) for s in self.shards])
        out = np.full((len(vecs), len(video_ids[0]) if video_ids else 0), np.nan, np.float32)
        for part in parts:
            out = np.where(np.isnan(out), part, out)
        if np.isnan(out).any():
            unknown = sorted({video_ids[b][j] for b, j in zip(*np.nonzero(np.isnan(out)), strict=True)})
            raise KeyError(f"unknown video ids: {unknown[:10]}")
        self._observe("score", start)
        return out

    async def hard_negatives(self, vecs, positives: list[str], k: int) -> list[list[str]]:
        """The k best-scoring videos of each query other than its positive."""
        start = time.perf_counter()
        _, ids = await self.search(vecs, k + 1)
        out = [[v for v in row if v and v != pos][:k] for row, pos in zip(ids.tolist(), positives, strict=True)]
        self._observe("hard_negatives", start)
        return out


def start_shards(index_dir: str | Path, num_cpus: float, num_gpus: float = 0.0,
                 use_gpu: bool = False) -> list:
    """One actor per shard of a built index; a shard uses its GPU only if it was given one."""
    manifest = read_manifest(index_dir)
    return [IndexShardActor.options(num_cpus=num_cpus, num_gpus=num_gpus)
            .remote(str(index_dir), i, use_gpu and num_gpus > 0) for i in range(manifest["num_shards"])]


def start_retrieval(cfg: Config, index_dir: str | Path, *, encoder_gpus: float = 0.0):
    """Shard actors + query encoder + router for a built index; returns the router handle."""
    manifest = read_manifest(index_dir)
    policy_dir, embedder_dir = resolve_model_dirs(cfg)
    expected = model_id(embedder_dir, cfg.model.embed_instruction, cfg.video)
    if manifest["model_id"] != expected:
        raise ValueError(f"index {index_dir} was built by {manifest['model_id']}, but the query "
                         f"encoder is {expected}: rebuild the index")
    res = cfg.resources
    shards = start_shards(index_dir, res.cpus_per_actor, res.gpus_per_index_shard,
                          cfg.retrieval.use_gpu)
    encoder = QueryEncoderActor.options(num_cpus=res.cpus_per_actor, num_gpus=encoder_gpus).remote(
        str(embedder_dir), str(policy_dir), cfg.model.dtype, cfg.model.embed_instruction)
    router = RetrievalRouter.remote(shards, encoder, manifest)
    ray.get(router.ready.remote())
    return router


class RouterClient:
    """The agent loop's RetrieverClient over a router handle (one query per call)."""

    def __init__(self, router):
        self.router = router

    async def search(self, text: str, soft_tokens: np.ndarray | None, k: int) -> SearchResult:
        soft = None if soft_tokens is None else np.asarray(soft_tokens, np.float32)[None]
        vecs, scores, ids = await self.router.search_text.remote([text], soft, k)
        keep = ids[0] != ""
        return SearchResult(vecs[0], ids[0][keep].tolist(), scores[0][keep].tolist())

    async def score(self, vector: np.ndarray, video_ids: list[str]) -> list[float]:
        return (await self.router.score.remote(np.asarray(vector)[None], [video_ids]))[0].tolist()
