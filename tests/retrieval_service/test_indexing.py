"""The Ray Data indexing pipeline end to end on the synthetic corpus (plus broken entries)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus.schema import videos_table, write_parquet
from retrieval_service.index import load_shard, merge_topk, read_manifest
from retrieval_service.indexing import REPORT, build_index, read_embeddings

pytestmark = pytest.mark.slow


def table_with_broken_videos(synth, tmp_path, n: int):
    """The first n synthetic videos (absolute paths) plus a corrupt and a missing file."""
    rows = pq.read_table(synth.videos_path).to_pylist()[:n]
    rows = [r | {"path": str(synth.out_dir / r["path"])} for r in rows]
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    extra = dict(duration_s=12.0, fps=4.0, num_frames=48)
    rows += [dict(video_id="zz_corrupt", path=str(bad), **extra),
             dict(video_id="zz_missing", path=str(tmp_path / "nowhere.mp4"), **extra)]
    path = tmp_path / f"videos_{n}.parquet"
    write_parquet(videos_table(rows), path)
    return path


def test_index_resume_and_report(ray_cluster, cfg, synth, synth_embeddings, tmp_path):
    out = tmp_path / "index"
    first = build_index(cfg, table_with_broken_videos(synth, tmp_path, 30), out, progress=False)
    assert (first.embedded, first.skipped, first.indexed) == (30, 0, 30)
    assert first.decoders == {"decord": 30}  # which decoder read each embedded video
    assert {f.video_id for f in first.failures} == {"zz_corrupt", "zz_missing"}
    reasons = {f.video_id: f.reason for f in first.failures}
    assert reasons["zz_corrupt"].startswith("CorruptVideoError")
    assert reasons["zz_missing"].startswith("VideoNotFoundError")

    full = table_with_broken_videos(synth, tmp_path, synth.num_videos)
    second = build_index(cfg, full, out, progress=False)
    assert (second.embedded, second.skipped) == (synth.num_videos - 30, 30)
    assert second.indexed == synth.num_videos and len(second.failures) == 2
    third = build_index(cfg, full, out, progress=False)
    assert (third.embedded, third.skipped, third.indexed) == (0, synth.num_videos, synth.num_videos)
    assert third.decoders == {}
    assert json.loads((out / REPORT).read_text())["failures"][0]["video_id"].startswith("zz_")

    # The pipeline's vectors are the embedder's, and the shards hold exactly them.
    ids, vectors = read_embeddings(out / "embeddings" / third.model_id)
    want = dict(zip(*synth_embeddings, strict=True))
    assert sorted(ids) == sorted(want)
    np.testing.assert_allclose(vectors, np.stack([want[v] for v in ids]), atol=1e-5)
    manifest = read_manifest(out)
    assert manifest["model_id"] == third.model_id and manifest["count"] == synth.num_videos
    shards = [load_shard(out, i) for i in range(manifest["num_shards"])]
    scores, got = merge_topk([s.search(vectors, 1) for s in shards], 1)
    assert list(got[:, 0]) == ids and np.allclose(scores[:, 0], 1, atol=1e-5)


def test_single_shot_video_retrieval_of_test_queries(embedder, synth, synth_index):
    """The baseline SQR must beat: the untrained tiny embedder's VR R@1 on test queries."""
    import torch

    queries = [q for q in pq.read_table(synth.queries_path).to_pylist() if q["split"] == "test"]
    manifest = read_manifest(synth_index)
    shards = [load_shard(synth_index, i) for i in range(manifest["num_shards"])]
    with torch.no_grad():
        vecs = embedder.encode_queries([q["text"] for q in queries]).numpy()
    scores, ids = merge_topk([s.search(vecs, 10) for s in shards], 10)
    assert ids.shape == (len(queries), 10) and (ids != "").all()
    assert (np.diff(scores, axis=1) <= 0).all() and np.abs(scores).max() <= 1 + 1e-5
    r_at_1 = float(np.mean([ids[i, 0] == q["video_id"] for i, q in enumerate(queries)]))
    print(f"\nVR R@1 of the untrained tiny embedder on {len(queries)} test queries: {r_at_1:.3f}")
