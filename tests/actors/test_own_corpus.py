"""A user's own corpus end to end: `corpus build` on a real-format mini corpus (a folder of
H.264/MPEG-4 files, FIG annotation files with bad rows, a truncated and a missing video),
then the whole job on it with the paper's preset brought home by `local_tiny`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from tests.corpus.realformat import EXPECTED, MISSING, write_fig, write_videos
from tests.overrides import SHORT_JOB

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    videos, files = write_videos(root), write_fig(root)
    out = root / "corpus"
    cmd = [sys.executable, "-m", "cli", "corpus", "build", "--format", "fig",
           "--annotations", f"train={files['train']}", "--annotations", f"test={files['test']}",
           "--videos", str(videos), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return root, out, done.stdout


@pytest.fixture(scope="module")
def job(built, cfg):
    from actors.driver import run
    from config import load_config

    root, out, _ = built
    job_cfg = load_config(["charades_fig", "local_tiny"], SHORT_JOB + [
        f"corpus.video_dir={out}", f"paths.workdir={root / 'work'}",
        f"paths.model_cache={cfg.paths.model_cache}-short"])
    summary = run(job_cfg)
    yield job_cfg, summary
    ray.shutdown()


def test_build_reports_what_it_left_out(built):
    _, out, printed = built
    assert "train: 6 videos, 13 queries" in printed and "test: 3 videos, 6 queries" in printed
    assert MISSING in printed and "TRUNC" in printed and "fig_train.jsonl:17" in printed
    report = json.loads((out / "build_report.json").read_text())
    assert report["counts"]["train"]["queries"] == EXPECTED["fig"]["train"]


def test_the_whole_job_runs_on_the_built_corpus(job):
    job_cfg, summary = job
    results = json.loads(Path(summary["results"]).read_text())
    assert results["stages"]["index"]["indexed"] == 9  # every decodable video, TRUNC not
    for tag in ("untrained", "sft", "grpo"):
        final = results["eval"][tag]["final"]
        assert final["num_queries"] == EXPECTED["fig"]["test"]
        sub = json.loads((Path(job_cfg.paths.workdir) / "eval" / tag / "tvr_submission.json").read_text())
        assert len(sub["VCMR"]) == final["num_queries"]
        assert all(isinstance(p["desc_id"], int) for p in sub["VCMR"])  # FIG's own desc_ids
        assert {p["desc_id"] for p in sub["VCMR"]} == set(range(112, 118))
    assert results["stages"]["grpo"]["steps"] == job_cfg.train.grpo_steps
    predictions = pq.read_table(Path(job_cfg.paths.workdir) / "eval" / "grpo" / "predictions.parquet")
    assert set(predictions.column("query_id").to_pylist()) == {f"fig:{i}" for i in range(112, 118)}
