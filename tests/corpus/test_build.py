"""`corpus build` on a real-format mini corpus: what is kept, what the report names, resume,
strict mode and the command line's errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import ray
from typer.testing import CliRunner

from cli.main import app
from corpus.build import PROBES, REPORT, BuildError, build_corpus, find_videos, locate
from corpus.schema import read_queries, read_videos
from corpus.tables import load_built_corpus
from tests.corpus.realformat import EXPECTED, MISSING, VIDEOS, WRITERS, write_videos

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _own_ray():
    """The build starts Ray when none is running; leave none behind for later modules."""
    started_here = not ray.is_initialized()
    yield
    if started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    videos = write_videos(root)
    files = {fmt: {k: str(v) for k, v in write(root).items()} for fmt, write in WRITERS.items()}
    return root, videos, files


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_build_keeps_what_is_usable_and_names_the_rest(mini, fmt):
    root, videos, files = mini
    report = build_corpus(fmt, files[fmt], videos, root / f"out_{fmt}", progress=False)
    want = EXPECTED[fmt]
    assert {s: c["queries"] for s, c in report.counts.items()} == {"train": want["train"],
                                                                   "test": want["test"]}
    assert report.counts["train"]["videos"] == 6 and report.counts["test"]["videos"] == 3
    assert len(report.rows_left_out) == want["left_out"]
    assert all(files[fmt]["train"] in r for r in report.rows_left_out)  # each names its file
    assert [os.path.splitext(v)[0] for v in report.missing_videos] == [MISSING]
    assert [os.path.splitext(v)[0] for v in report.undecodable] == ["TRUNC"]
    assert "TRUNC.mp4" in next(iter(report.undecodable.values()))
    assert (len(report.clamped), len(report.dropped)) == (want["clamped"], want["dropped"])

    out = root / f"out_{fmt}"
    queries = read_queries(out / "queries.parquet").to_pylist()
    videos_rows = {r["video_id"]: r for r in read_videos(out / "videos.parquet").to_pylist()}
    assert len(queries) == want["train"] + want["test"]
    assert {os.path.splitext(v)[0] for v in videos_rows} == set(VIDEOS) - {"TRUNC"}
    for q in queries:  # every span inside the probed video
        assert 0 <= q["start_s"] < q["end_s"] <= videos_rows[q["video_id"]]["duration_s"] + 1e-9
        assert q["duration_s"] == videos_rows[q["video_id"]]["duration_s"]
    # probed metadata: the 14 s H.264 file at 25 fps, and the truncated MPEG-4 file's real length
    ax = videos_rows[next(v for v in videos_rows if v.startswith("AX01"))]
    assert (ax["duration_s"], ax["fps"], ax["num_frames"]) == (14.0, 25.0, 350)
    short = videos_rows[next(v for v in videos_rows if v.startswith("SHORT"))]
    assert 5.0 < short["duration_s"] < 15.0
    assert json.loads((out / REPORT).read_text())["counts"] == report.counts
    corpus = load_built_corpus(out, fmt)
    assert len(corpus.queries("test")) == want["test"]


def test_rebuild_probes_only_new_or_changed_files(mini, tmp_path):
    root, videos, files = mini
    out = tmp_path / "out"
    first = build_corpus("fig", files["fig"], videos, out, progress=False)
    assert (first.probed, first.reused) == (len(VIDEOS), 0)
    again = build_corpus("fig", files["fig"], videos, out, progress=False)
    assert (again.probed, again.reused) == (0, len(VIDEOS))
    assert again.counts == first.counts
    # a build killed while writing leaves a torn last line; a changed file is probed again
    with (out / PROBES).open("a") as f:
        f.write('{"path": "/x", "si')
    changed = videos / VIDEOS["AX01"][0]
    shutil.copy(videos / VIDEOS["BX02"][0], changed)
    third = build_corpus("fig", files["fig"], videos, out, progress=False)
    assert (third.probed, third.reused) == (1, len(VIDEOS) - 1)
    ax = [r for r in read_videos(out / "videos.parquet").to_pylist() if r["video_id"] == "AX01"]
    assert ax[0]["duration_s"] == 10.0  # the new content's


def test_strict_stops_at_the_first_problem_and_writes_nothing(mini, tmp_path):
    root, videos, files = mini
    with pytest.raises(BuildError, match="fig_train.jsonl:17"):
        build_corpus("fig", files["fig"], videos, tmp_path / "a", strict=True, progress=False)
    assert not (tmp_path / "a" / "queries.parquet").exists()
    # the train file without its bad rows: the missing video is the first problem
    clean = tmp_path / "train.jsonl"
    clean.write_text("".join(line + "\n" for line in open(files["fig"]["train"]).read().splitlines()
                             if line.startswith("{") and line.endswith("}") and "fig_desc" in line
                             and '"time": [1.0]' not in line))
    with pytest.raises(BuildError, match=f"'{MISSING}'.*not found"):
        build_corpus("fig", {"train": str(clean)}, videos, tmp_path / "b", strict=True,
                     progress=False)
    report = build_corpus("fig", {"test": files["fig"]["test"]}, videos, tmp_path / "c",
                          strict=True, progress=False)
    assert report.counts == {"test": {"videos": 3, "queries": 6}}


def test_videos_are_found_by_id_stem_and_extension(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "a.avi", "sub/b.MKV", "c.txt", "12@N00_9.mp4"):
        (tmp_path / name).write_bytes(b"x")
    found = find_videos(tmp_path)
    assert locate("a", found).name == "a.mp4"  # .mp4 before .avi
    assert locate("a.avi", found).name == "a.avi"
    assert locate("b", found).name == "b.MKV"
    assert locate("c", found) is None
    assert locate("12@N00_9.mov", found).name == "12@N00_9.mp4"  # a DiDeMo id, converted file
    with pytest.raises(BuildError, match="no such video folder"):
        find_videos(tmp_path / "nope")


def test_cli_build_and_its_errors(mini, tmp_path):
    root, videos, files = mini
    ok = runner.invoke(app, ["corpus", "build", "--format", "fig", "--annotations",
                             f"train={files['fig']['train']}", "--annotations",
                             f"test={files['fig']['test']}", "--videos", str(videos),
                             "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert MISSING in ok.output and "TRUNC" in ok.output and "train: 6 videos, 13 queries" in ok.output
    base = ["corpus", "build", "--videos", str(videos), "--out", str(tmp_path / "o")]
    cases = [
        (["--format", "mp4", "--annotations", f"test={files['fig']['test']}"], 2, "'mp4'"),
        (["--format", "fig", "--annotations", files["fig"]["test"]], 2, "SPLIT=PATH"),
        (["--format", "fig", "--annotations", f"dev={files['fig']['test']}"], 1, "unknown split 'dev'"),
        (["--format", "fig", "--annotations", f"test={root}"], 1, "is a directory"),
        (["--format", "fig", "--annotations", f"test={files['charades']['test']}"], 1, "is it a fig file"),
        (["--format", "fig", "--annotations", f"test={files['fig']['test']}", "--strict",
          "--videos", str(root / "nope")], 1, "no such video folder"),
    ]
    for args, code, text in cases:
        out = runner.invoke(app, [*base, *args])
        assert out.exit_code == code and text in out.output, (args, out.output)


def test_the_job_refuses_a_corpus_of_another_format(mini, tmp_path):
    root, videos, files = mini
    build_corpus("fig", {"test": files["fig"]["test"]}, videos, tmp_path, progress=False)
    with pytest.raises(ValueError, match="corpus.source=didemo but .* holds \\['fig'\\]"):
        load_built_corpus(tmp_path, "didemo")
    with pytest.raises(FileNotFoundError, match="videosearch corpus build"):
        load_built_corpus(tmp_path / "empty", "fig")
