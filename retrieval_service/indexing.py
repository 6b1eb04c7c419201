"""Corpus indexing on Ray Data: videos table -> decode -> embed (actor pool) -> Parquet -> shards.

Layout of `out_dir`: `embeddings/<model_id>/part-*.parquet` (video_id, embedding, model_id),
the FAISS shards with their manifest (retrieval_service.index), and `report.json`.
Embeddings are keyed by a model id that hashes the weights, the instruction and the frame
sampling, so a re-run resumes (skips every video already embedded with the same settings)
while a changed embedder starts a fresh directory instead of mixing vector spaces.
A video that fails to decode is reported (video_id, path, reason) and the run goes on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from config.schema import Config, VideoConfig
from corpus.schema import read_videos
from corpus.video import DecodedVideo, VideoDecodeError, decode_video
from models.loading import model_dirs
from retrieval_service.embedder import Embedder, model_id
from retrieval_service.index import write_index

REPORT = "report.json"
FLUSH_ROWS = 256  # embeddings per Parquet part: what a crash can cost
DECODE_WORKER_BYTES = 640 << 20


@dataclass
class Failure:
    video_id: str
    path: str
    reason: str


@dataclass
class IndexReport:
    model_id: str
    num_videos: int  # rows of the videos table
    embedded: int  # embedded by this run
    skipped: int  # already embedded by an earlier run
    indexed: int  # vectors in the shards
    shard_counts: list[int]
    seconds: float  # embedding stage of this run, pipeline start-up included
    index_dir: str
    failures: list[Failure] = field(default_factory=list)
    decoders: dict[str, int] = field(default_factory=dict)  # decoder -> videos it read

    @property
    def videos_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"{self.num_videos} videos: {self.embedded} embedded ({self.videos_per_s:.2f}/s), "
                 f"{self.skipped} already done, {len(self.failures)} failed; "
                 f"{self.indexed} indexed in shards {self.shard_counts} -> {self.index_dir}"]
        if set(self.decoders) - {"decord"}:  # worth a line only when a fallback was needed
            lines.append("  decoded by " + ", ".join(f"{k}: {v}" for k, v in sorted(self.decoders.items())))
        lines += [f"  failed {f.video_id} ({f.path}): {f.reason}" for f in self.failures]
        return "\n".join(lines)


def decode_row(row: dict, video: VideoConfig) -> dict:
    """Ray Data map: a videos-table row -> frames, or an error message for the report."""
    out = {"video_id": row["video_id"], "path": row["path"], "error": "", "decoder": ""}
    try:
        d = decode_video(row["path"], video, cache=False)
    except VideoDecodeError as e:
        return out | {"error": f"{type(e).__name__}: {e}", "frames": np.zeros((0, 0, 0, 3), np.uint8),
                      "timestamps": np.zeros(0), "duration_s": 0.0, "source_fps": 0.0}
    return out | {"frames": d.frames, "timestamps": d.timestamps, "duration_s": d.duration_s,
                  "source_fps": d.source_fps, "decoder": d.decoder}


class EmbedBatch:
    """Ray Data callable class: one embedder per actor, loaded once."""

    def __init__(self, embedder_dir: str, dtype: str, instruction: str, video: VideoConfig):
        self.embedder = Embedder(embedder_dir, dtype=dtype, instruction=instruction, video=video)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], bool)
        # Ray hands out read-only views, which torch.from_numpy warns about.
        videos = [DecodedVideo(batch["frames"][i].copy(), batch["timestamps"][i],
                               float(batch["duration_s"][i]), float(batch["source_fps"][i]))
                  for i in np.flatnonzero(ok)]
        emb = np.full((len(ok), self.embedder.dim), np.nan, np.float32)
        emb[ok] = self.embedder.encode_videos(videos)
        return {"video_id": batch["video_id"], "path": batch["path"], "error": batch["error"],
                "decoder": batch["decoder"], "embedding": emb}


def _embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([("video_id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)),
                      ("model_id", pa.string())])


def read_embeddings(directory: Path) -> tuple[list[str], np.ndarray]:
    """All parts of one model id; a video embedded twice keeps one row."""
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        return [], np.zeros((0, 0), np.float32)
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    ids = table["video_id"].to_pylist()
    last = dict(zip(ids, range(len(ids)), strict=True))  # a later row overwrites an earlier one
    rows = np.array(sorted(last.values()), np.int64)
    flat = table["embedding"].combine_chunks().flatten().to_numpy()
    vectors = flat.reshape(len(ids), -1)[rows]
    return [ids[i] for i in rows], np.ascontiguousarray(vectors, np.float32)


def _flush(directory: Path, ids: list[str], vectors: list[np.ndarray], mid: str) -> None:
    """Atomic part write: a part on disk is always complete."""
    if not ids:
        return
    emb = np.stack(vectors).astype(np.float32)
    table = pa.table({"video_id": ids,
                      "embedding": pa.FixedSizeListArray.from_arrays(emb.ravel(), emb.shape[1]),
                      "model_id": [mid] * len(ids)}, schema=_embeddings_schema(emb.shape[1]))
    tmp = directory / f".part-{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp)
    tmp.rename(directory / f"part-{uuid.uuid4().hex}.parquet")
    ids.clear()
    vectors.clear()


def _todo(videos_path: Path, done: set[str]) -> tuple[list[dict], set[str]]:
    """(rows still to embed, every video id of the table); paths resolved against its folder."""
    rows = read_videos(videos_path).to_pylist()
    root = videos_path.resolve().parent
    todo = [r | {"path": str(root / r["path"])} for r in rows if r["video_id"] not in done]
    return todo, {r["video_id"] for r in rows}


def _embedding_dim(embedder_dir: Path) -> int:
    return json.loads((embedder_dir / "config.json").read_text())["text_config"]["hidden_size"]


def pipeline(rows: list[dict], embedder_dir: Path, cfg: Config, num_actors: int,
             batch_size: int) -> ray.data.Dataset:
    """decode (CPU tasks) -> embed (actor pool, a GPU per actor when the cluster has GPUs)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    video = cfg.video
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), len(rows) // batch_size)))
    # A decode task reserves its worker (measured ~0.5 GiB) plus the frames it holds, twice
    # for decoder buffers. Differing resource requests also keep Ray Data from fusing
    # decoding into the embed actors, which would serialise the two stages.
    memory = DECODE_WORKER_BYTES + 2 * 3 * cfg.video.max_frames * cfg.video.max_pixels
    ds = ds.map(decode_row, fn_kwargs={"video": video}, num_cpus=1, memory=memory)
    return ds.map_batches(
        EmbedBatch, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs=dict(embedder_dir=str(embedder_dir), dtype=cfg.model.dtype,
                                   instruction=cfg.model.embed_instruction, video=video),
        compute=ray.data.ActorPoolStrategy(size=num_actors), num_gpus=gpus,
        num_cpus=cfg.resources.cpus_per_actor)


def collect(ds: ray.data.Dataset, total: int, directory: Path, mid: str,
            progress: bool) -> tuple[list[Failure], Counter]:
    """Drains the pipeline, writing embeddings in atomic parts; returns the failures and how
    many videos each decoder read."""
    failures, ids, vectors, decoders = [], [], [], Counter()
    with tqdm(total=total, desc="embed videos", unit="video", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for vid, path, err, decoder, emb in zip(batch["video_id"], batch["path"], batch["error"],
                                                    batch["decoder"], batch["embedding"], strict=True):
                if err:
                    failures.append(Failure(str(vid), str(path), str(err)))
                else:
                    decoders[str(decoder)] += 1
                    ids.append(str(vid))
                    vectors.append(emb)
            if len(ids) >= FLUSH_ROWS:
                _flush(directory, ids, vectors, mid)
            bar.update(len(batch["video_id"]))
    _flush(directory, ids, vectors, mid)
    return failures, decoders


def build_index(cfg: Config, videos_path: str | Path, out_dir: str | Path, *,
                num_actors: int | None = None, batch_size: int = 4,
                progress: bool = True) -> IndexReport:
    """Embeds what is not embedded yet, then (re)builds the S shards from all embeddings."""
    videos_path, out_dir = Path(videos_path), Path(out_dir)
    if not ray.is_initialized():
        ray.init()
    _, embedder_dir = model_dirs(cfg)
    mid = model_id(embedder_dir, cfg.model.embed_instruction, cfg.video)
    directory = out_dir / "embeddings" / mid
    directory.mkdir(parents=True, exist_ok=True)
    done, _ = read_embeddings(directory)
    todo, in_table = _todo(videos_path, set(done))
    if num_actors is None:
        num_actors = max(1, int(ray.cluster_resources().get("GPU", 0)))
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # tqdm counts videos
    start = time.perf_counter()
    try:
        failures, decoders = [], Counter()
        if todo:
            ds = pipeline(todo, embedder_dir, cfg, num_actors, batch_size)
            failures, decoders = collect(ds, len(todo), directory, mid, progress)
    finally:
        ctx.enable_progress_bars = bars
    seconds = time.perf_counter() - start
    ids, vectors = read_embeddings(directory)
    keep = [i for i, v in enumerate(ids) if v in in_table]
    vectors = vectors[keep].reshape(len(keep), _embedding_dim(embedder_dir))
    manifest = write_index(out_dir, vectors, [ids[i] for i in keep], cfg.retrieval, mid)
    num_videos = len(in_table)
    report = IndexReport(mid, num_videos, len(todo) - len(failures), num_videos - len(todo),
                         manifest["count"], manifest["shard_counts"], seconds, str(out_dir),
                         failures, dict(decoders))
    (out_dir / REPORT).write_text(json.dumps(asdict(report), indent=1))
    return report
