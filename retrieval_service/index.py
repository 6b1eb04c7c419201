"""FAISS shards over L2-normalised video embeddings: build, save, load, search, score, merge.

Inner product is cosine here. Results follow one total order, score descending then
video_id ascending, so that S shards merged give exactly what one index gives, ties
included: FAISS keeps an arbitrary subset of equal scores at the k-th place, so a shard
widens its search until the tie run at the boundary is complete before cutting to k.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import faiss
import numpy as np

from config.schema import IndexType, RetrievalConfig

MANIFEST = "manifest.json"
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
MIN_POINTS_PER_CENTROID = 39  # below this FAISS's k-means is starved
GPU_MAX_K = 2048


def shard_of(video_ids, num_shards: int) -> np.ndarray:
    """Stable across runs and corpus growth: a video never moves when others are added."""
    return np.array([zlib.crc32(v.encode()) % num_shards for v in video_ids], np.int64)


def build_faiss(vectors: np.ndarray, rcfg: RetrievalConfig) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    kind = IndexType(rcfg.index_type)
    if kind is IndexType.flat:
        index = faiss.IndexFlatIP(d)
    elif kind is IndexType.hnsw:
        index = faiss.IndexHNSWFlat(d, rcfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        nlist = max(1, min(rcfg.ivf_nlist, n // MIN_POINTS_PER_CENTROID))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = 64  # k-means on a sample: minutes -> seconds at 1M
        index.train(vectors if n else np.zeros((1, d), np.float32))
        index.nprobe = min(rcfg.ivf_nprobe, nlist)
    index.add(vectors)
    return index


def to_gpu(index: faiss.Index, resources, device: int = 0) -> faiss.Index:
    """A GPU copy for searching (`resources` must outlive it); HNSW has no GPU version."""
    if isinstance(index, faiss.IndexHNSW):
        return index
    return faiss.index_cpu_to_gpu(resources, device, index)


class Shard:
    """One FAISS index plus the video ids of its rows (sorted, so FAISS row order = id order)."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, use_gpu: bool = False):
        if index.ntotal != len(ids):
            raise ValueError(f"index has {index.ntotal} rows but {len(ids)} ids")
        self.cpu_index = index
        self.ids = np.asarray(ids, dtype=str)
        self.row_of = {v: i for i, v in enumerate(self.ids.tolist())}
        if isinstance(index, faiss.IndexIVF):
            index.make_direct_map()  # for reconstruct_batch() in _held()
        self.gpu_resources = None
        self.index = index
        if use_gpu and faiss.get_num_gpus() > 0:
            self.gpu_resources = faiss.StandardGpuResources()
            self.index = to_gpu(index, self.gpu_resources)

    def _for_k(self, k: int) -> faiss.Index:
        """The GPU index where it can serve k (its k-selection stops at 2048), else the CPU one."""
        return self.index if k <= GPU_MAX_K else self.cpu_index

    @classmethod
    def build(cls, vectors: np.ndarray, ids, rcfg: RetrievalConfig) -> Shard:
        ids = np.asarray(ids, dtype=str)
        order = np.argsort(ids, kind="stable")
        return cls(build_faiss(np.asarray(vectors)[order], rcfg), ids[order], rcfg.use_gpu)

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, index_path: Path, ids_path: Path) -> None:
        faiss.write_index(self.cpu_index, str(index_path))
        np.save(ids_path, self.ids)

    @classmethod
    def load(cls, index_path: Path, ids_path: Path, use_gpu: bool = False) -> Shard:
        return cls(faiss.read_index(str(index_path)), np.load(ids_path), use_gpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [B, k'], ids str [B, k']) with k' = min(k, len); missing = -inf, ''."""
        queries = np.ascontiguousarray(queries, np.float32)
        n, kk = len(self), min(k, len(self))
        if kk == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), str)
        scores, rows = self._for_k(kk + 1).search(queries, min(kk + 1, n))
        out_s, out_r = scores[:, :kk].copy(), rows[:, :kk].copy()
        width = scores.shape[1]
        tied = np.flatnonzero((width > kk) & (scores[:, -1] == scores[:, kk - 1]) & (rows[:, -1] >= 0))
        while tied.size:  # widen only the queries whose k-th score continues past the cut
            width = min(2 * width, n)
            s, r = self._for_k(width).search(queries[tied], width)
            more = (width < n) & (s[:, -1] == s[:, kk - 1]) & (r[:, -1] >= 0)
            for row, srow, rrow in zip(tied[~more], s[~more], r[~more], strict=True):
                cut_s, cut_r = _cut(srow, rrow, self.ids, kk)
                out_s[row], out_r[row] = -np.inf, -1  # an approximate index may find fewer
                out_s[row, :len(cut_s)], out_r[row, :len(cut_r)] = cut_s, cut_r
            tied = tied[more]
        out_s[out_r < 0] = -np.inf
        ids = np.where(out_r >= 0, self.ids[np.maximum(out_r, 0)], "")
        return _sorted(out_s, ids)

    def score(self, queries: np.ndarray, video_ids: list[list[str]]) -> np.ndarray:
        """[B, K] dot products with the given ids; NaN where an id lives in another shard."""
        queries = np.asarray(queries, np.float32)
        out = np.full((len(queries), len(video_ids[0]) if video_ids else 0), np.nan, np.float32)
        for b, row in enumerate(video_ids):
            cols, held = self._held(row)
            if cols:
                out[b, cols] = held @ queries[b]
        return out

    def vectors(self, video_ids: list[str]) -> np.ndarray:
        """[K, D] the stored vectors of the given ids; NaN rows for ids of other shards."""
        out = np.full((len(video_ids), self.cpu_index.d), np.nan, np.float32)
        cols, held = self._held(video_ids)
        if cols:
            out[cols] = held
        return out

    def _held(self, video_ids: list[str]) -> tuple[list[int], np.ndarray | None]:
        """(positions of the ids this shard holds, their stored vectors)."""
        cols = [j for j, v in enumerate(video_ids) if v in self.row_of]
        if not cols:
            return cols, None
        return cols, self.cpu_index.reconstruct_batch(
            np.array([self.row_of[video_ids[j]] for j in cols], np.int64))


def _cut(scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int):
    """The first k of one query's candidates in (score desc, id asc) order."""
    keep = rows >= 0
    scores, rows = scores[keep], rows[keep]
    order = np.lexsort((ids[rows], -scores))[:k]
    return scores[order], rows[order]


def _sorted(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-shard (scores, ids) [B, k_s] -> global top-k [B, min(k, sum k_s)] in the total order."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], dtype=str) for p in parts], axis=1)
    scores, ids = _sorted(scores, ids)
    return scores[:, :k], ids[:, :k]


def recall_at_1(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of queries whose approximate top-1 is the exact top-1."""
    return float(np.mean(approx_ids[:, 0] == exact_ids[:, 0]))


def _paths(index_dir: Path, i: int) -> tuple[Path, Path]:
    return index_dir / f"shard_{i:03d}.faiss", index_dir / f"shard_{i:03d}.ids.npy"


def write_index(index_dir: str | Path, vectors: np.ndarray, ids, rcfg: RetrievalConfig,
                model_id: str) -> dict:
    """Builds S shards and writes them, then the manifest last (it marks a complete index)."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / MANIFEST).unlink(missing_ok=True)
    ids = np.asarray(ids, dtype=str)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate video ids")
    which = shard_of(ids, rcfg.num_shards)
    counts = []
    for i in range(rcfg.num_shards):
        shard = Shard.build(np.asarray(vectors)[which == i], ids[which == i], rcfg)
        shard.save(*_paths(index_dir, i))
        counts.append(len(shard))
    manifest = dict(model_id=model_id, dim=int(np.asarray(vectors).shape[1]),
                    index_type=IndexType(rcfg.index_type).value, num_shards=rcfg.num_shards,
                    count=int(len(ids)), shard_counts=counts)
    (index_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(index_dir: str | Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no index at {index_dir} ({MANIFEST} missing: build it first)")
    return json.loads(path.read_text())


def load_shard(index_dir: str | Path, i: int, use_gpu: bool = False) -> Shard:
    read_manifest(index_dir)
    return Shard.load(*_paths(Path(index_dir), i), use_gpu=use_gpu)
