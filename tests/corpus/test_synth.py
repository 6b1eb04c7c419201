import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest

from config.schema import SynthConfig, VideoConfig
from corpus.schema import QUERY_SCHEMA, VIDEO_SCHEMA
from corpus.synth import BACKGROUNDS, COLOURS, generate_corpus, moments_of, scenes_of, splits_of
from corpus.tables import load_corpus
from corpus.video import decode_video, probe_video

CFG = SynthConfig()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(CFG, tmp_path_factory.mktemp("synth_a"))


@pytest.fixture(scope="module")
def queries(corpus) -> list[dict]:
    return pq.read_table(corpus.queries_path).to_pylist()


@pytest.fixture(scope="module")
def manifest(corpus) -> dict:
    return json.loads(corpus.manifest_path.read_text())


@pytest.fixture(scope="module")
def frames(corpus):
    """Every video decoded at 1 fps, the rate the policy sees."""
    rows = pq.read_table(corpus.videos_path).to_pylist()
    return {r["video_id"]: decode_video(corpus.out_dir / r["path"], VideoConfig(fps=1.0, max_frames=64, max_pixels=64 * 64, min_pixels=0)) for r in rows}


def colour_pixels(frame: np.ndarray, rgb) -> int:
    return int((np.abs(frame.astype(int) - rgb).max(axis=-1) <= 30).sum())


def test_tables(corpus, queries):
    videos = pq.read_table(corpus.videos_path)
    assert videos.schema.equals(VIDEO_SCHEMA) and pq.read_table(corpus.queries_path).schema.equals(QUERY_SCHEMA)
    assert videos.num_rows == corpus.num_videos == CFG.num_videos and len(queries) == corpus.num_queries
    for row in videos.to_pylist():
        assert row["path"] == f"videos/{row['video_id']}.mp4"
        assert probe_video(corpus.out_dir / row["path"]) == (row["duration_s"], row["fps"], row["num_frames"])
    assert {q["source"] for q in queries} == {"synth"}
    assert all(q["query_id"].startswith(q["video_id"] + ":q") for q in queries)


def test_spans_inside_video(queries):
    for q in queries:
        assert 0 <= q["start_s"] < q["end_s"] <= q["duration_s"] == CFG.seconds
        assert q["start_s"].is_integer() and 2 <= q["end_s"] - q["start_s"] <= 6


def test_queries_are_unique(corpus, queries):
    per_video = Counter(q["video_id"] for q in queries)
    assert set(per_video) == {f"synth_{i:04d}" for i in range(CFG.num_videos)}
    assert max(per_video.values()) == CFG.queries_per_video
    # Unique corpus-wide, hence within each video: the ground-truth video is the only answer.
    assert len({q["text"] for q in queries}) == len(queries)


def test_deterministic_and_idempotent(corpus, frames, tmp_path):
    other = generate_corpus(CFG, tmp_path)
    for name in ("videos.parquet", "queries.parquet", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (corpus.out_dir / name).read_bytes()
    for vid, decoded in frames.items():
        again = decode_video(tmp_path / "videos" / f"{vid}.mp4", VideoConfig(fps=1.0, max_frames=64, max_pixels=64 * 64, min_pixels=0))
        np.testing.assert_array_equal(again.frames, decoded.frames)

    files = [other.videos_path, other.queries_path, other.manifest_path, tmp_path / "videos/synth_0000.mp4"]
    before = [f.stat().st_mtime_ns for f in files]
    assert generate_corpus(CFG, tmp_path) == other
    assert [f.stat().st_mtime_ns for f in files] == before


def test_other_config_regenerates(tmp_path):
    small = SynthConfig(num_videos=6, seconds=6, fps=2)
    generate_corpus(small, tmp_path)
    first = pq.read_table(tmp_path / "queries.parquet")
    fewer = generate_corpus(replace(small, num_videos=4, seed=1), tmp_path)
    assert fewer.num_videos == 4 and pq.read_table(fewer.videos_path).num_rows == 4
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [f"synth_{i:04d}.mp4" for i in range(4)]
    assert not pq.read_table(fewer.queries_path).equals(first)


def test_near_duplicates_differ_in_one_event(corpus, manifest, queries, frames):
    pairs = corpus.near_duplicate_of
    assert len(pairs) == round(CFG.num_videos * CFG.near_duplicate_fraction)
    assert len(set(pairs) | set(pairs.values())) == 2 * len(pairs)  # disjoint pairs
    texts = {}
    for q in queries:
        texts.setdefault(q["video_id"], []).append(q)
    for copy, orig in pairs.items():
        a, b = manifest["videos"][orig], manifest["videos"][copy]
        assert a["background"] == b["background"] and len(a["events"]) == len(b["events"])
        changed = [(x, y) for x, y in zip(a["events"], b["events"], strict=True) if x != y]
        assert len(changed) == 1
        x, y = changed[0]
        assert sum(x[k] != y[k] for k in x) == 1 and (x["colour"] != y["colour"] or x["shape"] != y["shape"])
        # Each video's queries are about the changed event, so the other one is a true negative.
        for vid, event in ((orig, x), (copy, y)):
            assert [(q["start_s"], q["end_s"]) for q in texts[vid]] == [(event["start_s"], event["end_s"])]
        assert texts[orig][0]["text"] != texts[copy][0]["text"]
        # Pixels (lossless coding): identical outside the changed span, different inside it.
        diff = np.abs(frames[orig].frames.astype(int) - frames[copy].frames.astype(int)).max(axis=(1, 2, 3))
        inside = (frames[orig].timestamps >= x["start_s"]) & (frames[orig].timestamps < x["end_s"])
        assert diff[inside].min() > 100 and diff[~inside].max() == 0


def test_splits(corpus, queries):
    split_of = {q["video_id"]: q["split"] for q in queries}
    assert all(split_of[q["video_id"]] == q["split"] for q in queries)
    counts = Counter(split_of.values())
    assert set(counts) == {"train", "val", "test"}
    assert 0.6 <= counts["train"] / len(split_of) <= 0.8
    assert all(split_of[c] == split_of[o] for c, o in corpus.near_duplicate_of.items())
    every = splits_of(corpus)  # every video, also those no query asks about
    assert len(every) == corpus.num_videos and split_of.items() <= every.items()


def test_splits_of_videos_without_queries(tmp_path):
    """Past ~300 videos most descriptions repeat, so most videos have no unique event to ask
    about; their split still comes from the manifest."""
    big = generate_corpus(replace(CFG, num_videos=400, seed=3), tmp_path)
    queried = {q["video_id"] for q in pq.read_table(big.queries_path).to_pylist()}
    every = splits_of(big)
    assert len(queried) < len(every) == 400
    assert Counter(every.values())["test"] == 60


def test_pixels_show_events_exactly_in_their_spans(manifest, frames):
    for vid, video in manifest["videos"].items():
        decoded = frames[vid]
        median = np.median(decoded.frames.reshape(len(decoded.frames), -1, 3), axis=1)
        assert np.abs(median - BACKGROUNDS[video["background"]]).max() <= 8
        for event in video["events"]:
            for t, frame in zip(decoded.timestamps, decoded.frames, strict=True):
                visible = event["start_s"] <= t < event["end_s"]
                count = colour_pixels(frame, COLOURS[event["colour"]])
                # An object covers ~200-440 px; chroma subsampling may tint a stray edge pixel.
                assert count >= 100 if visible else count <= 5, (vid, event, t, count)


def test_every_event_is_an_annotated_moment(corpus, queries, manifest):
    """SFT targets may describe every event of a training video; the queries are a subset
    (up to the queries' capitalised colour)."""
    moments = moments_of(corpus)
    assert len(moments) == sum(len(v["events"]) for v in manifest["videos"].values())
    key = lambda r: (r["video_id"], r["text"].lower(), r["start_s"], r["end_s"], r["split"])  # noqa: E731
    assert {key(q) for q in queries} < {key(m) for m in moments}
    tables = load_corpus(corpus.videos_path, corpus.queries_path, moments)
    train = tables.annotated("train")
    assert train and all(m["split"] == "train" for m in train)
    assert len(train) > len(tables.queries("train"))
    bare = load_corpus(corpus.videos_path, corpus.queries_path)  # an imported corpus
    assert bare.annotated("train") == [r for r in queries if r["split"] == "train"]


def test_capital_colours_capitalise_the_queries_only(queries, tmp_path):
    """`capital_colours`: queries write the colour capitalised (the form the embedder
    underweights) about the same events; annotations stay lower-case, as by default."""
    capital = generate_corpus(replace(CFG, capital_colours=True), tmp_path)
    scenes = scenes_of(capital)
    rows = pq.read_table(capital.queries_path).to_pylist()
    assert [(q["query_id"], q["text"].lower()) for q in rows] == [(q["query_id"], q["text"]) for q in queries]
    for q in rows:
        e = next(e for e in scenes[q["video_id"]].events if e.start_s == q["start_s"])
        background = scenes[q["video_id"]].background
        assert q["text"] == f"a {e.colour.capitalize()} {e.shape} moves {e.motion} on a {background} background"
    assert all(q["text"] == q["text"].lower() for q in queries)
    assert all(m["text"] == m["text"].lower() for m in moments_of(capital))


def test_split_shares_follow_the_config(tmp_path):
    cfg = replace(CFG, num_videos=40, val_fraction=0.1, test_fraction=0.4, seed=5)
    every = splits_of(generate_corpus(cfg, tmp_path))
    counts = Counter(every.values())
    # a near-duplicate pair is one unit, so a split may end one video past its share
    assert 16 <= counts["test"] <= 17 and 4 <= counts["val"] <= 5
    assert counts["train"] == 40 - counts["test"] - counts["val"]


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (0.5, 0.5), (0.0, 1.2)])
def test_split_shares_that_leave_nothing_to_train_on_are_refused(tmp_path, val, test):
    with pytest.raises(ValueError, match="val_fraction and test_fraction"):
        generate_corpus(replace(CFG, val_fraction=val, test_fraction=test), tmp_path)
