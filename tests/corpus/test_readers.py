"""Annotation readers and the query/video Parquet schemas."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import readers, schema
from corpus.readers import AnnotationError, Problem


def _at(path, tail):
    """A pattern for a message that starts with the file path."""
    return "^" + re.escape(str(path)) + tail


def _rows(table):
    """Rows as tuples in QUERY_SCHEMA column order."""
    return [tuple(r.values()) for r in table.to_pylist()]


def _where_reasons(report):
    return [(p.line_or_row, p.reason) for p in report.problems]


# --- Charades-STA -------------------------------------------------------------------------

CHARADES = (
    "AO8RW 0.0 6.9##person puts a book away.\n"
    "\n"
    "AO8RW 2.5 40.0##person opens the door\n"  # beyond known duration 30
    "Y6R7T 1.0 3.0##  \n"  # empty text
    "Y6R7T 1.0 abc##person sits\n"  # wrong type
    "Y6R7T 4.0 4.0##person sits\n"  # empty span
    "Y6R7T -1.0 2.0##person stands\n"  # negative
    "Y6R7T 1.0 nan##person stands\n"  # non-finite
    "Y6R7T 1.0 2.0 person without separator\n"
    "Z9Z9Z 3.0 50.0##no duration, kept\n"
)


def test_charades_rows_and_report(tmp_path):
    f = tmp_path / "charades_sta_test.txt"
    f.write_text(CHARADES)
    res = readers.read_charades(f, "test", durations={"AO8RW": 30.0, "Y6R7T": 20.0})
    assert res.table.schema.equals(schema.QUERY_SCHEMA)
    assert _rows(res.table) == [
        (
            "charades:AO8RW:1",
            "AO8RW",
            "person puts a book away.",
            0.0,
            6.9,
            30.0,
            "test",
            "charades",
        ),
        ("charades:Z9Z9Z:10", "Z9Z9Z", "no duration, kept", 3.0, 50.0, 50.0, "test", "charades"),
    ]
    rep = res.report
    assert {p.file for p in rep.problems} == {str(f)}
    assert _where_reasons(rep) == [
        (3, "span beyond duration (end 40.0 > duration 30.0)"),
        (4, "empty text"),
        (5, "wrong type: times ['1.0', 'abc'] must be numbers"),
        (6, "empty span (end 4.0 <= start 4.0)"),
        (7, "negative time (start -1.0, end 2.0)"),
        (8, "non-finite time (start 1.0, end nan, duration 20.0)"),
        (9, "expected 'VIDEOID start end##sentence'"),
    ]
    assert (rep.read, rep.skipped) == (2, 7)
    summary = rep.summary()
    assert summary.splitlines()[0] == f"{f}: read 2, skipped 7"
    assert f"{f}:3: span beyond duration" in summary


def test_charades_non_utf8_line_is_a_problem(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"AAA 0 1##ok\nBBB 0 1##\xff\xfe bad\n")
    res = readers.read_charades(f, "train")
    assert res.table.column("video_id").to_pylist() == ["AAA"]
    assert _where_reasons(res.report) == [(2, "not valid UTF-8")]


def test_charades_strict_raises_with_file_and_line(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("AAA 0 1##ok\n\nBBB 5 2##backwards\nCCC 0 1##never reached\n")
    with pytest.raises(AnnotationError, match=_at(f, r":3: empty span")):
        readers.read_charades(f, "train", strict=True)
    assert issubclass(AnnotationError, ValueError)


# --- FIG JSONL ----------------------------------------------------------------------------


def _fig(**kw):
    row = dict(video="v1", time=[1.0, 4.0], duration=10.0, fig_desc="a dog jumps", desc_id="d1")
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


def test_fig_rows_and_report(tmp_path):
    f = tmp_path / "fig.jsonl"
    lines = [
        _fig(),
        _fig(desc_id=..., video="v2", time=[0, 2]),  # no desc_id -> line-number id
        "{not json",
        _fig(desc_id="d3", fig_desc=...),
        _fig(desc_id="d4", time="1-4"),
        _fig(desc_id="d5", duration="10"),
        _fig(desc_id="d6", time=[3.0, 11.0]),
        _fig(desc_id="d7", duration=0),
        "",
        _fig(desc_id="d1", time=[2.0, 3.0]),  # duplicate id
        "[1, 2]",
    ]
    f.write_text("\n".join(lines) + "\n")
    res = readers.read_fig(f, "val")
    assert _rows(res.table) == [
        ("fig:d1", "v1", "a dog jumps", 1.0, 4.0, 10.0, "val", "fig"),
        ("fig:v2:2", "v2", "a dog jumps", 0.0, 2.0, 10.0, "val", "fig"),
    ]
    assert _where_reasons(res.report) == [
        (3, "bad JSON at column 2: Expecting property name enclosed in double quotes"),
        (4, "missing field 'fig_desc'"),
        (5, "wrong type: 'time' must be a list, got str"),
        (6, "wrong type: 'duration' must be a number, got str"),
        (7, "span beyond duration (end 11.0 > duration 10.0)"),
        (8, "non-positive duration 0"),
        (10, "duplicate query_id 'fig:d1'"),
        (11, "wrong type: line must be a JSON object, got list"),
    ]


def test_fig_strict(tmp_path):
    f = tmp_path / "fig.jsonl"
    f.write_text(_fig() + "\n" + _fig(desc_id="x", time=[1]) + "\n")
    with pytest.raises(AnnotationError, match=_at(f, r":2: wrong type: 'time'")):
        readers.read_fig(f, "val", strict=True)


# --- DiDeMo -------------------------------------------------------------------------------


def test_didemo_consensus_and_clamp(tmp_path):
    f = tmp_path / "didemo.json"
    rows = [  # (video, description, times, annotation_id, extra fields)
        ("a.mov", "the dog runs", [[1, 2], [1, 2], [0, 0]], 7, {}),
        ("b.mov", "short clip", [[2, 3]], 8, {"duration": 12}),
        ("c.mov", "tie: the first most common wins", [[4, 5], [0, 1], [0, 1], [4, 5]], 9, {}),
        ("d.mov", "starts after the end", [[3, 3]], 10, {"duration": 12}),
        ("e.mov", "bad chunk", [[2, 6]], 11, {}),
        ("f.mov", "", [[0, 0]], 12, {}),
        ("g.mov", None, [[0, 0]], 13, {}),
        ("h.mov", "no times", [], 14, {}),
        ("i.mov", "reversed", [[3, 1]], 15, {}),
    ]
    keys = ("video", "description", "times", "annotation_id")
    data = [{k: v for k, v in zip(keys, r[:4], strict=True) if v is not None} | r[4] for r in rows]
    data.append("not an object")
    f.write_text(json.dumps(data))
    res = readers.read_didemo(f, "test")
    t = res.table.to_pydict()
    assert t["query_id"] == ["didemo:7", "didemo:8", "didemo:9"]
    assert t["start_s"] == [5.0, 10.0, 20.0]
    assert t["end_s"] == [15.0, 12.0, 30.0]
    assert t["duration_s"] == [30.0, 12.0, 30.0]
    assert _where_reasons(res.report) == [
        (3, "span beyond duration (start 15.0 >= duration 12)"),
        (4, "bad chunk pair [2, 6] (need 0 <= start <= end <= 5)"),
        (5, "empty text"),
        (6, "missing field 'description'"),
        (7, "empty 'times'"),
        (8, "bad chunk pair [3, 1] (need 0 <= start <= end <= 5)"),
        (9, "wrong type: annotation must be a JSON object, got str"),
    ]


def test_didemo_whole_file_errors(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[{"video": "a",\n  "times": [[1, 2]]')
    with pytest.raises(AnnotationError, match=_at(f, r": invalid JSON at line 2 column")):
        readers.read_didemo(f, "test")
    f.write_text('{"video": "a"}')
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        readers.read_didemo(f, "test")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        readers.read_didemo(tmp_path / "missing.json", "test")


def test_didemo_strict_names_row(tmp_path):
    f = tmp_path / "d.json"
    rows = [
        dict(video="a", description="x", times=[[0, 0]], annotation_id=1),
        dict(video="b", description="y", times="0-1", annotation_id=2),
    ]
    f.write_text(json.dumps(rows))
    with pytest.raises(AnnotationError, match=_at(f, r":1: wrong type: 'times'")):
        readers.read_didemo(f, "test", strict=True)


# --- ActivityNet Captions -----------------------------------------------------------------


def test_activitynet_rows_and_report(tmp_path):
    f = tmp_path / "val_1.json"
    data = {
        "v_good": {
            "duration": 60.0,
            "timestamps": [[0, 10.5], [20, 61.0], [5, 5]],
            "sentences": [" A man talks. ", "He leaves.", "Nothing."],
        },
        "v_mismatch": {"duration": 30.0, "timestamps": [[0, 1]], "sentences": ["a", "b"]},
        "v_nodur": {"timestamps": [[0, 1]], "sentences": ["a"]},
        "v_neg": {"duration": -3, "timestamps": [[0, 1]], "sentences": ["a"]},
        "v_text": {"duration": 30, "timestamps": [[0, 1], [1, 2]], "sentences": [3, "ok"]},
        "v_list": [1, 2],
    }
    f.write_text(json.dumps(data))
    res = readers.read_activitynet(f, "val")
    assert _rows(res.table) == [
        ("anet:v_good:0", "v_good", "A man talks.", 0.0, 10.5, 60.0, "val", "activitynet"),
        ("anet:v_text:1", "v_text", "ok", 1.0, 2.0, 30.0, "val", "activitynet"),
    ]
    assert _where_reasons(res.report) == [
        ("v_good", "sentence 1: span beyond duration (end 61.0 > duration 60.0)"),
        ("v_good", "sentence 2: empty span (end 5.0 <= start 5.0)"),
        ("v_mismatch", "1 timestamps but 2 sentences"),
        ("v_nodur", "missing field 'duration'"),
        ("v_neg", "bad duration -3 (must be positive and finite)"),
        ("v_text", "sentence 0: wrong type: text must be a string, got int"),
        ("v_list", "wrong type: video entry must be a JSON object, got list"),
    ]
    assert (res.report.read, res.report.skipped) == (2, 7)


def test_activitynet_whole_file_and_strict(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{"v": {"duration": 3,}}')
    with pytest.raises(AnnotationError, match=_at(f, r": invalid JSON at line 1 column 22: ")):
        readers.read_activitynet(f, "val")
    f.write_text(json.dumps({"v_x": {"duration": 5, "timestamps": [[0, 1]], "sentences": []}}))
    with pytest.raises(AnnotationError, match=_at(f, r":v_x: 1 timestamps but 0 sentences$")):
        readers.read_activitynet(f, "val", strict=True)


# --- dispatch -----------------------------------------------------------------------------


def test_read_annotations_dispatch(tmp_path):
    assert set(readers.READERS) == {"charades", "fig", "didemo", "activitynet"}
    f = tmp_path / "c.txt"
    f.write_text("AAA 0 8##ok\n")
    res = readers.read_charades(f, "train", durations={"AAA": 5.0})
    assert res.table.num_rows == 0
    assert res.report.problems == [
        Problem(str(f), 1, "span beyond duration (end 8.0 > duration 5.0)")
    ]
    # through the dispatcher, a file that yields nothing is an error naming the first problem
    with pytest.raises(AnnotationError, match=r"no valid charades annotation read \(1 rows skipped; "
                       r"the first: .*span beyond duration"):
        readers.read_annotations("charades", f, "train", durations={"AAA": 5.0})
    with pytest.raises(ValueError, match="unknown annotation format 'tvr'"):
        readers.read_annotations("tvr", f, "train")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        readers.read_annotations("fig", tmp_path / "nope.txt", "train")


# --- schema / Parquet ---------------------------------------------------------------------


def test_parquet_round_trip(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("AAA 0 1.5##one\nBBB 2 4##two\n")
    table = readers.read_charades(f, "train").table
    path = tmp_path / "out" / "queries.parquet"
    schema.write_parquet(table, path)
    back = schema.read_queries(path)
    assert back.equals(table)
    videos = schema.videos_table(
        [dict(video_id="AAA", path="/v/AAA.mp4", duration_s=30.0, fps=24.0, num_frames=720)]
    )
    schema.write_parquet(videos, tmp_path / "videos.parquet")
    assert schema.read_videos(tmp_path / "videos.parquet").to_pylist() == videos.to_pylist()
    assert videos.schema.equals(schema.VIDEO_SCHEMA)


def test_schema_validation_errors(tmp_path):
    with pytest.raises(ValueError, match=r"row 0: missing values for \['split', 'source'\]"):
        schema.queries_table(
            [dict(query_id="q", video_id="v", text="t", start_s=0.0, end_s=1.0, duration_s=2.0)]
        )
    with pytest.raises(ValueError, match="matches neither"):
        schema.write_parquet(pa.table({"x": [1]}), tmp_path / "x.parquet")
    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "path": ["p"]}), partial)
    missing = _at(partial, r": missing columns \['duration_s', 'fps', 'num_frames'\]")
    with pytest.raises(ValueError, match=missing):
        schema.read_videos(partial)
    bad_type = tmp_path / "bad_type.parquet"
    cols = {n: ["x"] for n in schema.QUERY_SCHEMA.names}
    pq.write_table(pa.table(cols), bad_type)
    with pytest.raises(ValueError, match=_at(bad_type, r": columns do not match the schema")):
        schema.read_queries(bad_type)
    with_null = tmp_path / "null.parquet"
    cols = {"video_id": ["a"], "path": [None], "duration_s": [1.0], "fps": [2.0], "num_frames": [2]}
    pq.write_table(pa.table(cols), with_null)
    with pytest.raises(ValueError, match=r"null values in columns \['path'\]"):
        schema.read_videos(with_null)
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match=_at(not_parquet, r": not a readable Parquet file")):
        schema.read_queries(not_parquet)
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        schema.read_queries(tmp_path / "absent.parquet")


def test_read_queries_reorders_and_casts(tmp_path):
    path = tmp_path / "q.parquet"
    cols = {n: ["s"] for n in reversed(schema.QUERY_SCHEMA.names)}
    cols.update(start_s=[0], end_s=[1], duration_s=[2])  # int columns from another writer
    pq.write_table(pa.table(cols), path)
    t = schema.read_queries(path)
    assert t.schema.equals(schema.QUERY_SCHEMA)
    assert t.column("end_s").to_pylist() == [1.0]
    assert t.column("duration_s").to_pylist() == [2.0]


def test_the_wrong_format_for_a_file_is_an_error_not_an_empty_table(tmp_path):
    f = tmp_path / "anet.json"
    f.write_text(json.dumps({"v1": {"duration": 20.0, "timestamps": [[1, 5]], "sentences": ["a"]}}))
    assert readers.read_annotations("activitynet", f, "train").table.num_rows == 1
    for fmt in ("fig", "charades"):
        with pytest.raises(AnnotationError, match=f"is it a {fmt} file"):
            readers.read_annotations(fmt, f, "train")
    with pytest.raises(AnnotationError, match="expected a JSON list, got dict"):
        readers.read_annotations("didemo", f, "train")


def test_a_directory_or_unreadable_path_is_a_clear_error(tmp_path):
    with pytest.raises(AnnotationError, match="is a directory, not an annotation file"):
        readers.read_annotations("fig", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        readers.read_annotations("didemo", tmp_path / "nope.json", "train")


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    line = json.dumps({"video": "v1", "time": [1, 3], "duration": 10.0, "fig_desc": "a man"})
    f = tmp_path / "fig.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n")
    assert readers.read_fig(f, "test").table.column("video_id").to_pylist() == ["v1"]
    g = tmp_path / "didemo.json"
    g.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"video": "v2.mp4", "description": "x",
                                                 "annotation_id": 1, "times": [[0, 0]]}]).encode())
    assert readers.read_didemo(g, "test").table.column("video_id").to_pylist() == ["v2.mp4"]


def test_didemo_duration_follows_num_segments(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([
        {"video": "a.mp4", "description": "x", "annotation_id": 1, "times": [[0, 1]], "num_segments": 4},
        {"video": "b.mp4", "description": "y", "annotation_id": 2, "times": [[4, 5]], "num_segments": 4},
    ]))
    res = readers.read_didemo(f, "test")
    assert res.table.column("duration_s").to_pylist() == [20.0]
    assert "beyond duration" in res.report.problems[0].reason  # chunk 4 starts at 20 s
