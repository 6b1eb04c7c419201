"""The training job end to end on a tiny configuration: every stage, the outputs a user
reads, metrics on the Prometheus endpoint, resume, and self-healing under faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from tests.overrides import SHORT_JOB

pytestmark = pytest.mark.slow

SHORT = SHORT_JOB


@pytest.fixture(scope="module")
def short_cfg(tmp_path_factory, cfg):
    from config import load_config

    work = tmp_path_factory.mktemp("job")
    return load_config("cpu_tiny", SHORT + [f"paths.workdir={work}",
                                            f"paths.model_cache={cfg.paths.model_cache}-short"])


@pytest.fixture(scope="module")
def first_run(short_cfg):
    from actors.driver import run

    summary = run(short_cfg)
    yield summary
    ray.shutdown()


def _metrics_text() -> str:
    port = ray._private.worker.global_worker.node.metrics_export_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_all_stages_write_what_a_user_reads(short_cfg, first_run):
    work = short_cfg.paths.workdir
    results = json.loads(open(first_run["results"]).read())
    assert set(results["eval"]) == {"untrained", "sft", "grpo", "paired"}
    paired = results["eval"].pop("paired")
    assert set(paired) == {"grpo-sft", "sft-untrained"}
    # 12 videos leave the val split one; its queries' held-out turns show train videos, as a
    # whole-index search would, so the refined query's InfoNCE is measured all the same
    sft = results["stages"]["sft"]
    assert sft["heldout_turns"] > 0 and len(sft["heldout_infonce"]) == 2
    low, high = sft["heldout_infonce_change"][1:]
    assert low <= sft["heldout_infonce"][1] - sft["heldout_infonce"][0] <= high
    fit = sft["heads_fit"]  # the heads fit afresh after SFT's steps
    assert fit["steps"] == short_cfg.sqr.fit_steps > 0 and fit["train_error"][0] == pytest.approx(1.0)
    assert fit["train_error"][1] < fit["train_error"][0] and fit["val_error"][0] == pytest.approx(1.0)
    assert sft["heldout_infonce"][1] == pytest.approx(fit["heldout_infonce"][1])
    mean, low, high = paired["grpo-sft"]["reward"]
    assert low <= mean <= high
    for tag in results["eval"]:
        low, high = results["eval"][tag]["final_ci"]["VR"]
        assert low <= results["eval"][tag]["final"]["VR"] <= high
        out = f"{work}/eval/{tag}"
        table = pq.read_table(f"{out}/predictions.parquet")
        assert table.num_rows >= results["eval"][tag]["final"]["num_queries"] > 0
        assert all(isinstance(t, str) for t in table.column("response_text").to_pylist())
        rewards = table.column("episode_reward").to_pylist()
        assert min(rewards) <= results["eval"][tag]["final"]["reward"] <= max(rewards)
        refined = sum(t >= 2 for t in table.column("turn").to_pylist())  # SQR vs next result
        assert results["eval"][tag]["refinement"]["refined_turns"] == refined
        figure = results["eval"][tag]["refinement"]  # every refined search ranked again in full
        assert figure["turns"] == refined
        if refined:
            assert 1 <= figure["gt_rank_after"] <= results["stages"]["index"]["indexed"]
        spread = figure["soft_spread"]  # how much the soft tokens differ between turns
        assert spread is None or 0.0 <= spread <= 1.0
        sub = json.loads(open(f"{out}/tvr_submission.json").read())
        assert len(sub["VCMR"]) == results["eval"][tag]["final"]["num_queries"]
    assert results["stages"]["grpo"]["steps"] == 2
    rollouts = sorted(os.listdir(f"{work}/rollouts"))
    assert rollouts == ["grpo_000000.parquet", "grpo_000001.parquet"]
    step0 = pq.read_table(f"{work}/rollouts/{rollouts[0]}")
    assert set(step0.column("sample").to_pylist()) == set(range(short_cfg.rollout.group_size))
    assert step0.column("is_final").to_pylist().count(True) == (
        short_cfg.rollout.group_size * short_cfg.train.queries_per_step)
    from actors.driver import stage_queries
    from corpus.tables import load_corpus

    train = load_corpus(f"{work}/corpus/videos.parquet", f"{work}/corpus/queries.parquet").queries("train")
    grpo = {q.query_id for q in stage_queries(train, "grpo", short_cfg.train.grpo_video_fraction,
                                              short_cfg.train.seed)}
    assert 0 < len(grpo) < len(train)  # the preset keeps some videos out of SFT for GRPO
    trained = {q for r in rollouts for q in pq.read_table(f"{work}/rollouts/{r}").column("query_id").to_pylist()}
    assert trained <= grpo
    assert os.path.getsize(results["plot"]) > 1000
    assert any(name.startswith("events") for name in os.listdir(f"{work}/tensorboard"))
    state = json.loads(open(f"{work}/job_state.json").read())
    assert state["grpo_step"] == 2 and "grpo" in state["done"]
    history = json.loads(open(Path(first_run["results"]).parent / "history.json").read())
    # the learner ran on as many torch threads as CPUs its rank asked for (the preset's 2)
    assert {h["threads"] for h in history} == {int(short_cfg.resources.cpus_per_learner_rank)} == {2}
    grpo_steps = [h for h in history if h["stage"] == "grpo"]
    assert {(h["queries_drawn"], h["groups_dropped_fraction"]) for h in grpo_steps} == {(2, 0.0)}


def test_metrics_reach_the_prometheus_endpoint(first_run):
    wanted = ["ray_rollout_generated_tokens_total", "ray_rollout_trajectories_total",
              "ray_learner_step_seconds", "ray_reward_component", "ray_weight_sync_seconds",
              "ray_grpo_staleness"]
    deadline = time.time() + 60
    while True:
        text = _metrics_text()
        missing = [m for m in wanted if m not in text]
        if not missing or time.time() > deadline:
            break
        time.sleep(3)
    assert not missing, missing


def test_resume_continues_from_the_last_checkpoint(short_cfg, first_run):
    from actors.driver import run

    longer = replace(short_cfg, train=replace(short_cfg.train, grpo_steps=3))
    run(longer, stages="grpo", resume=True)
    state = json.loads(open(f"{short_cfg.paths.workdir}/job_state.json").read())
    history = json.loads(open(f"{short_cfg.paths.workdir}/results/history.json").read())
    assert state["grpo_step"] == 3
    assert [h["step"] for h in history if h["stage"] == "grpo"] == [2]  # one new step only
    # keep_checkpoints=1: the checkpoint resumed from is gone once the next one is complete
    ckpt = Path(state["grpo_checkpoint"])
    assert [p.name for p in ckpt.parent.glob("step_*")] == [ckpt.name]


def test_an_eval_run_evaluates_the_trained_policy_beside_the_training_results(short_cfg, first_run):
    from actors.driver import run

    work = Path(short_cfg.paths.workdir)
    training = (work / "results" / "results.json").read_text()
    summary = run(short_cfg, stages="eval")
    state = json.loads((work / "job_state.json").read_text())
    results = json.loads(Path(summary["results"]).read_text())
    assert Path(summary["results"]).parent == work / "results-eval"
    assert results["stages"]["start_weights"] == state["grpo_export"]
    assert results["eval"]["latest"]["final"]["num_queries"] > 0
    assert (work / "results" / "results.json").read_text() == training  # not overwritten


def test_a_killed_worker_and_shard_lose_no_episode(short_cfg, first_run):
    """Kill the PolicyWorker process (its agent loops with it) and an index shard mid-step:
    every (query, sample) comes back exactly once and the restarted worker holds the current weights."""
    from actors.driver import open_session
    from actors.rollout_pool import weights_from_export

    s = open_session(short_cfg)
    state = json.loads(open(f"{short_cfg.paths.workdir}/job_state.json").read())
    asyncio.run(s.pool.sync(weights_from_export(Path(state["sft_export"]))))
    worker = s.pool.workers[0]
    pid = ray.get(worker.pid.remote())
    shard = ray.get(s.router.shard_handles.remote())[0]
    queries = s.corpus.queries("train")[:3]

    async def step_with_faults():
        task = asyncio.ensure_future(s.pool.groups(queries, 2, seed=1))
        while not any(s.pool._load):  # episodes dispatched to the worker
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # their first turns are generating (a turn takes ~1 s)
        os.kill(pid, signal.SIGKILL)
        ray.kill(shard, no_restart=False)
        return await task

    try:
        groups = asyncio.run(step_with_faults())
    finally:
        s.metrics.close()  # its TensorBoard writer thread would outlive the test
    seen = [(turns[0].query_id, turns[0].sample) for group in groups for turns in group.episodes]
    assert sorted(seen) == sorted((q.query_id, g) for q in queries for g in range(2))
    assert all(turns[-1].is_final and turns[0].turn == 1
               for group in groups for turns in group.episodes)
    assert s.pool.retried_groups > 0
    assert ray.get(worker.weight_version.remote()) == s.pool.weights.version
    assert ray.get(worker.pid.remote()) != pid


def test_cli_serve_answers_over_http(short_cfg, first_run, tmp_path):
    """`python -m cli serve` on the job's index: healthz, a search, a bad request."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")  # a file: a full pipe would block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", *SHORT, f"paths.workdir={short_cfg.paths.workdir}",
         f"paths.model_cache={short_cfg.paths.model_cache}", f"retrieval.serve_port={port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("cli serve did not come up:\n" + (tmp_path / "serve.log").read_text()[-3000:])
        assert health == {"status": "ok", "videos": short_cfg.corpus.synth.num_videos}
        body = json.dumps({"queries": [{"text": "a red circle"}], "topk": 2}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/search", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            results = json.loads(r.read())["results"]
        assert len(results) == 1 and len(results[0]) == 2
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/search", data=b"{", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _grpo_workdir(short_cfg, dest: Path) -> Path:
    """A workdir holding the first run's corpus, index and SFT export: GRPO runs start there."""
    import shutil

    src = Path(short_cfg.paths.workdir)
    for name in ("corpus", "index"):
        shutil.copytree(src / name, dest / name)
    state = json.loads((src / "job_state.json").read_text())
    (dest / "job_state.json").write_text(json.dumps({"stage": "sft", "done": ["sft"],
                                                     "sft_export": state["sft_export"]}))
    return dest


def _history(work: Path) -> list[dict]:
    return [h for h in json.loads((work / "results" / "history.json").read_text())
            if h["stage"] == "grpo"]


def _each_episode_once(work: Path, cfg) -> None:
    """Every step's saved rollouts hold each (query, sample) of its groups exactly once."""
    files = sorted((work / "rollouts").glob("grpo_*.parquet"))
    assert len(files) == cfg.train.grpo_steps
    for f in files:
        finals = [(r["query_id"], r["sample"]) for r in pq.read_table(f).to_pylist() if r["is_final"]]
        assert len(finals) == len(set(finals)) == cfg.train.queries_per_step * cfg.rollout.group_size


def test_async_grpo_trains_one_version_behind_and_resumes(short_cfg, first_run, tmp_path):
    """k = 1: the next step's episodes generate while the learner trains, so every step after
    the first trains on samples one version old (with the decoupled correction), none too old
    to keep; a resumed job continues at the next step."""
    from actors.driver import run

    work = _grpo_workdir(short_cfg, tmp_path)
    cfg = replace(short_cfg, paths=replace(short_cfg.paths, workdir=str(work)),
                  train=replace(short_cfg.train, grpo_steps=3, max_staleness=1))
    run(cfg, stages="grpo")
    history = _history(work)
    assert [h["step"] for h in history] == [0, 1, 2]
    assert history[0]["staleness"] == 0 and history[0]["stale_tokens"] == 0
    assert all(h["staleness"] == 1 and h["stale_tokens"] > 0 for h in history[1:])
    assert all(h["stale_episodes_dropped"] == 0 for h in history)
    assert all(0 < h["behaviour_weight"] <= cfg.learner.behaviour_weight_cap for h in history[1:])
    _each_episode_once(work, cfg)
    run(replace(cfg, train=replace(cfg.train, grpo_steps=4)), stages="grpo", resume=True)
    assert [h["step"] for h in _history(work)] == [3]
    assert json.loads((work / "job_state.json").read_text())["grpo_step"] == 4


def test_grpo_over_the_gloo_broadcast_heals_a_killed_worker(short_cfg, first_run, tmp_path):
    """rollout.weight_transport=gloo (the nccl path's plumbing on CPU), k = 1: the weights reach
    the engine by vLLM's weight-transfer API every step, and a PolicyWorker killed during the
    loop rejoins a re-formed group holding the current version (no episode stale or lost)."""
    import threading

    from actors.driver import run

    work = _grpo_workdir(short_cfg, tmp_path)
    cfg = replace(short_cfg, paths=replace(short_cfg.paths, workdir=str(work)),
                  train=replace(short_cfg.train, grpo_steps=6, max_staleness=1),
                  rollout=replace(short_cfg.rollout, weight_transport="gloo"))
    stop, killed = threading.Event(), []

    def kill_once():
        while not any((work / "rollouts").glob("*.parquet")):
            if stop.wait(0.5):
                return
        if not stop.wait(0.5) and (pid := _newest_pid("ray::PolicyWorker")):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    try:
        run(cfg, stages="grpo")
    finally:
        stop.set()
        killer.join()
    assert killed
    history = _history(work)
    assert [h["step"] for h in history] == list(range(6))
    assert all(h["staleness"] <= 1 and h["stale_episodes_dropped"] == 0 for h in history)
    _each_episode_once(work, cfg)


def _newest_pid(title: str) -> int | None:
    """The most recently started process whose command line starts with `title` (this run's
    actor: an earlier run's may linger until Ray reaps it)."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline", "create_time"])
             if any(part.startswith(title) for part in (p.info["cmdline"] or []))]
    return max(procs, key=lambda p: p.info["create_time"]).pid if procs else None


def test_chaos_soak_async_grpo_survives_killed_workers_and_shards(short_cfg, first_run, tmp_path):
    """30 asynchronous GRPO steps while a PolicyWorker and an index shard are killed at random
    moments: every step completes, no trajectory lost or duplicated, all within the staleness
    bound, and the last checkpoint resumes to the next step."""
    import threading

    import numpy as np

    from actors.driver import run

    work = _grpo_workdir(short_cfg, tmp_path)
    cfg = replace(short_cfg, paths=replace(short_cfg.paths, workdir=str(work)),
                  train=replace(short_cfg.train, grpo_steps=30, max_staleness=1),
                  learner=replace(short_cfg.learner, checkpoint_every=10))
    stop, kills, rng = threading.Event(), [], np.random.default_rng(0)
    # once the GRPO loop runs, four kills at random moments of the next 60 s (the loop takes
    # minutes), alternating a PolicyWorker (a vLLM restart costs ~20 s) and an index shard
    moments = np.diff(np.sort(rng.uniform(1, 60, size=4)), prepend=0.0)

    def chaos():
        while not any((work / "rollouts").glob("*.parquet")):
            if stop.wait(0.5):
                return
        for wait in moments:
            if stop.wait(wait):
                return
            title = ["ray::PolicyWorker", "ray::IndexShardActor"][len(kills) % 2]
            if pid := _newest_pid(title):
                os.kill(pid, signal.SIGKILL)
                kills.append(title)

    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    try:
        summary = run(cfg, stages="grpo")
    finally:
        stop.set()
        killer.join()
    assert {"ray::PolicyWorker", "ray::IndexShardActor"} <= set(kills), kills
    history = _history(work)
    assert [h["step"] for h in history] == list(range(30))
    assert all(h["staleness"] <= 1 and h["stale_episodes_dropped"] == 0 for h in history)
    _each_episode_once(work, cfg)  # a kill mid-group re-ran the group: test_a_killed_worker...
    assert json.loads(Path(summary["results"]).read_text())["stages"]["grpo"]["steps"] == 30
    run(replace(cfg, train=replace(cfg.train, grpo_steps=31)), stages="grpo", resume=True)
    assert [h["step"] for h in _history(work)] == [30]
