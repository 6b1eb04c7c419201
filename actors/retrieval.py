"""The video search engine on Ray: S index shard actors, a query encoder, a router.

Shards load their shard from disk in __init__, so `max_restarts` brings a killed shard back
with the same content, and read-only calls are retried across the restart. The router
creates (owns) the shards and the encoder from plain specs, so that its own restart needs
nothing from the object store. The router is
an async actor: many rollout episodes and Serve requests are in flight at once, their
concurrent text searches are coalesced into batches, and the shards search in parallel.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import ray
import torch
from ray.util.metrics import Histogram

from actors import pin_to_cpus, role_resources
from config.schema import Config
from models.loading import model_dirs
from models.tokens import SQR_SLOT_TOKEN
from retrieval_service.coalesce import Coalescer
from retrieval_service.embedder import Embedder, model_id
from retrieval_service.index import load_shard, merge_topk, read_manifest
from rollout.agent import SearchResult

LATENCY_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


@ray.remote(max_restarts=-1, max_task_retries=3)
class IndexShardActor:
    def __init__(self, index_dir: str, shard: int, use_gpu: bool, cpu_set: list[int]):
        pin_to_cpus(cpu_set)
        self.shard = load_shard(index_dir, shard, use_gpu=use_gpu)

    def info(self) -> dict:
        return {"videos": len(self.shard), "omp_threads": faiss.omp_get_max_threads(),
                "on_gpu": self.shard.index is not self.shard.cpu_index}

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shard.search(vecs, k)

    def score(self, vecs: np.ndarray, video_ids: list[list[str]]) -> np.ndarray:
        return self.shard.score(vecs, video_ids)

    def vectors(self, video_ids: list[str]) -> np.ndarray:
        return self.shard.vectors(video_ids)


class StaleHeadsError(RuntimeError):
    """The encoder's SQR heads are not the router's latest (it restarted since the last sync)."""


@ray.remote(max_restarts=-1, max_task_retries=3)
class QueryEncoderActor:
    """The frozen embedder serving (text, soft tokens) -> query vectors, without gradients.

    SQR heads start from the policy directory (version 0) and are replaced by the learner's;
    soft-token queries name the heads version they expect, so that a restarted encoder,
    back on version 0, refuses them instead of answering with stale heads.
    """

    def __init__(self, embedder_dir: str, policy_dir: str | None, dtype: str, instruction: str,
                 cpu_set: list[int], refine_scale: float):
        pin_to_cpus(cpu_set)
        self.embedder = Embedder(embedder_dir, policy_dir, dtype, instruction,
                                 refine_scale=refine_scale)
        self.heads_version = 0

    def soft_shape(self) -> tuple[int, int] | None:
        return self.embedder.soft_shape

    def load_heads(self, state: dict, version: int) -> None:
        self.embedder.load_heads(state)
        self.heads_version = version

    @torch.inference_mode()
    def encode(self, texts: list[str], soft_tokens: np.ndarray | None = None,
               heads_version: int = 0) -> np.ndarray:
        if soft_tokens is not None and heads_version != self.heads_version:
            raise StaleHeadsError(f"encoder has heads v{self.heads_version}, query wants v{heads_version}")
        # Ray hands arrays over read-only (zero-copy from the object store): copy once.
        soft = None if soft_tokens is None else torch.tensor(soft_tokens, dtype=torch.float32)
        return self.embedder.encode_queries(texts, soft).cpu().numpy()


@dataclass
class ShardSpec:
    index_dir: str
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    use_gpu: bool = False  # search on the shard's GPU (faiss-gpu), when it is given one
    resources: dict = field(default_factory=dict)  # the role's custom resource, if any
    cpu_set: list[int] = field(default_factory=list)  # cores to pin to (resources.*_cpu_set)


@dataclass
class EncoderSpec:
    embedder_dir: str
    policy_dir: str | None
    dtype: str = "float32"
    instruction: str = "Represent the user's input."
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict = field(default_factory=dict)
    cpu_set: list[int] = field(default_factory=list)
    refine_scale: float = 1.0  # sqr.refine_scale


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class RetrievalRouter:
    """Owns its shards and encoder: they restart on their own, and die with the router.

    The learner's SQR heads live in the router (and are re-sent to a restarted encoder);
    a restarted router has lost them and refuses soft-token queries until they are loaded.
    """

    def __init__(self, shards: ShardSpec, encoder: EncoderSpec | None):
        self.manifest = read_manifest(shards.index_dir)
        self.shards = [
            IndexShardActor.options(num_cpus=shards.num_cpus, num_gpus=shards.num_gpus,
                                    resources=shards.resources)
            .remote(shards.index_dir, i, shards.use_gpu and shards.num_gpus > 0, shards.cpu_set)
            for i in range(self.manifest["num_shards"])]
        self.encoder = None if encoder is None else QueryEncoderActor.options(
            num_cpus=encoder.num_cpus, num_gpus=encoder.num_gpus,
            resources=encoder.resources).remote(
            encoder.embedder_dir, encoder.policy_dir, encoder.dtype, encoder.instruction,
            encoder.cpu_set, encoder.refine_scale)
        self.heads_version, self.heads_ref = 0, None
        self.heads_lost = ray.get_runtime_context().was_current_actor_reconstructed
        self._coalesced = Coalescer(self._search_text_batch)
        self.latency = Histogram("retrieval_search_seconds", "Retrieval call latency (router side).",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=("method",))

    async def ready(self) -> dict:
        """Waits for every shard (and the encoder) to be up: the manifest plus shard infos."""
        infos = await asyncio.gather(*[s.info.remote() for s in self.shards])
        if self.encoder is not None:
            await self.encoder.soft_shape.remote()
        return self.manifest | {"shards": list(infos)}

    async def soft_shape(self) -> tuple[int, int] | None:
        return None if self.encoder is None else await self.encoder.soft_shape.remote()

    def shard_handles(self) -> list:
        """For operators and fault-injection tests: the shard actors this router owns."""
        return list(self.shards)

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

    async def load_heads(self, state: dict) -> int:
        """The learner's SQR heads (state dict) for the encoder; returns their version."""
        self.heads_ref = ray.put(state)  # owned here, so it outlives the caller's copy
        self.heads_version, self.heads_lost = self.heads_version + 1, False
        await self.encoder.load_heads.remote(self.heads_ref, self.heads_version)
        return self.heads_version

    async def encode(self, texts: list[str], soft_tokens: np.ndarray | None = None) -> np.ndarray:
        if self.encoder is None:
            raise RuntimeError("this router has no query encoder")
        if soft_tokens is not None and self.heads_lost:
            raise RuntimeError("the router restarted and lost the SQR heads: call load_heads")
        try:
            return await self.encoder.encode.remote(texts, soft_tokens, self.heads_version)
        except StaleHeadsError:  # the encoder restarted: give it the heads again, retry once
            await self.encoder.load_heads.remote(self.heads_ref, self.heads_version)
            return await self.encoder.encode.remote(texts, soft_tokens, self.heads_version)

    async def search_text(self, texts: list[str], soft_tokens: np.ndarray | None,
                          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query vectors, scores, ids): the vectors are what InfoNCE later scores.

        Concurrent calls (one per episode in the agent loop) are served as one batch, so
        checked here first: a bad call must not fail the others of its batch.
        """
        start = time.perf_counter()
        texts = list(texts)
        if any(not isinstance(t, str) or SQR_SLOT_TOKEN in t for t in texts) or k < 1:
            raise ValueError(f"texts must be strings without {SQR_SLOT_TOKEN}, k >= 1")
        if soft_tokens is not None:
            soft_tokens = np.asarray(soft_tokens, np.float32)
            if soft_tokens.ndim != 3 or len(soft_tokens) != len(texts):
                raise ValueError(f"soft_tokens must be [{len(texts)}, N, D], got {soft_tokens.shape}")
        out = await self._coalesced((texts, soft_tokens, k))
        self._observe("search_text", start)
        return out

    async def _search_text_batch(self, calls: list[tuple]) -> list[tuple]:
        """One encode per soft-token shape, one fan-out with the largest k, cut per call."""
        texts = [t for ts, _, _ in calls for t in ts]
        ends = np.cumsum([len(ts) for ts, _, _ in calls])
        starts = ends - [len(ts) for ts, _, _ in calls]
        vecs = np.zeros((len(texts), self.manifest["dim"]), np.float32)
        kinds = [None if s is None else s.shape[1:] for _, s, _ in calls]
        for shape in set(kinds):
            group = [i for i, kind in enumerate(kinds) if kind == shape]
            rows = np.concatenate([np.arange(starts[i], ends[i]) for i in group])
            soft = None if shape is None else np.concatenate([calls[i][1] for i in group])
            vecs[rows] = await self.encode([texts[r] for r in rows], soft)
        scores, ids = await self.search(vecs, max(k for _, _, k in calls))
        return [(vecs[a:b], scores[a:b, :k], ids[a:b, :k])
                for (_, _, k), a, b in zip(calls, starts, ends, strict=True)]

    async def score(self, vecs, video_ids: list[list[str]]) -> np.ndarray:
        """[B, K] similarities of each query with its K given videos (for InfoNCE)."""
        start, vecs = time.perf_counter(), self._check(vecs)
        if len(video_ids) != len(vecs) or len({len(row) for row in video_ids}) > 1:
            raise ValueError("video_ids must be B lists of equal length K")
        ref = ray.put(vecs)
        out = _merged(await asyncio.gather(*[s.score.remote(ref, video_ids) for s in self.shards]),
                      lambda b, j: video_ids[b][j])
        self._observe("score", start)
        return out

    async def vectors(self, video_ids: list[str]) -> np.ndarray:
        """[K, D] the index's vectors of the given videos (the learner's InfoNCE in GRPO)."""
        start = time.perf_counter()
        out = _merged(await asyncio.gather(*[s.vectors.remote(video_ids) for s in self.shards]),
                      lambda j, _: video_ids[j])
        self._observe("vectors", start)
        return out


def _merged(parts: list[np.ndarray], id_at) -> np.ndarray:
    """The shards' answers (NaN where an id is another shard's) as one; KeyError naming the
    ids no shard holds (`id_at(i, j)` is the id at a NaN cell)."""
    out = parts[0]
    for part in parts[1:]:
        out = np.where(np.isnan(out), part, out)
    if np.isnan(out).any():
        unknown = sorted({id_at(i, j) for i, j in zip(*np.nonzero(np.isnan(out)), strict=True)})
        raise KeyError(f"unknown video ids: {unknown[:10]}")
    return out


def start_retrieval(cfg: Config, index_dir: str | Path, *, encoder_gpus: float = 0.0):
    """Router (with its shard actors and query encoder) for a built index; returns its handle."""
    manifest = read_manifest(index_dir)
    policy_dir, embedder_dir = model_dirs(cfg)
    expected = model_id(embedder_dir, cfg.model.embed_instruction, cfg.video)
    if manifest["model_id"] != expected:
        raise ValueError(f"index {index_dir} was built by {manifest['model_id']}, but the query "
                         f"encoder is {expected}: rebuild the index")
    res = cfg.resources
    shards = ShardSpec(str(index_dir), res.cpus_per_actor, res.gpus_per_index_shard,
                       cfg.retrieval.use_gpu, role_resources(cfg, "retrieval"),
                       list(res.retrieval_cpu_set))
    encoder = EncoderSpec(str(embedder_dir), str(policy_dir), cfg.model.dtype,
                          cfg.model.embed_instruction, res.cpus_per_actor, encoder_gpus,
                          role_resources(cfg, "retrieval"), list(res.retrieval_cpu_set),
                          cfg.sqr.refine_scale)
    router = RetrievalRouter.remote(shards, encoder)
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

    async def vectors(self, video_ids: list[str]) -> np.ndarray:
        return await self.router.vectors.remote(video_ids)
