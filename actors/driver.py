"""The training job: the Ray job entrypoint that wires search engine, rollouts and learner.

Stages: index -> sft -> grpo -> eval ("all" runs them in order). With no RAY_ADDRESS it
starts a local Ray cluster (the embedded default); under `ray job submit` it joins the
cluster it runs in. Every stage leaves its outputs under cfg.paths.workdir, and the job
state (stage, step, data position) is checkpointed so `--resume` continues a killed job.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from actors import role_resources
from actors.evaluate import evaluate
from actors.grpo_stage import Stop, stage_grpo
from actors.job_checks import check_outputs_outlive_the_job, cpu_shortfall
from actors.job_state import JobState
from actors.learner import LearnerGroup
from actors.policy_worker import PolicyWorker
from actors.retrieval import RouterClient, start_retrieval
from actors.rollout_pool import WorkerPool, sync_weights, weights_from_export
from actors.train_metrics import TrainMetrics
from config.schema import Config
from corpus.tables import CorpusTables, Query, load_built_corpus, load_corpus
from evaluation.bootstrap import heldout_report
from learner.engine import sft_schedule
from learner.sft_data import build_sft_examples
from models.loading import model_dirs
from retrieval_service.indexing import build_index, read_embeddings
from tiny.build import with_tiny_models

STAGES = ("index", "sft", "grpo", "eval")


@dataclass
class Session:
    cfg: Config
    work: Path
    corpus: CorpusTables
    policy_dir: Path
    embedder_dir: Path
    index_dir: Path
    router: object = None
    pool: WorkerPool | None = None
    metrics: TrainMetrics | None = None
    results: dict = field(default_factory=dict)

    @property
    def retriever(self) -> RouterClient:
        return RouterClient(self.router)

    def close(self) -> None:
        """Release the session's actors now (the router takes its shards and encoder with it)
        rather than whenever the driver's garbage collector drops the last handle: a run that
        follows in the same process otherwise finds the cluster's CPUs still held."""
        for actor in [*(self.pool.workers if self.pool else []), self.router]:
            if actor is not None:
                ray.kill(actor, no_restart=True)


def init_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=True)
        return
    # Logical CPUs: the tiny default's actors are mostly idle, 2 physical cores host them all.
    cpus = max(8, os.cpu_count() or 1)
    ray.init(address="local", num_cpus=cpus, include_dashboard=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                                       "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.rollout.kv_cache_gib)))}})


def start_workers(s: Session) -> None:
    res = s.cfg.resources
    workers = [PolicyWorker.options(num_cpus=res.cpus_per_actor,
                                    num_gpus=res.gpus_per_policy_worker,
                                    resources=role_resources(s.cfg, "rollout")).remote(
                   s.cfg, str(s.policy_dir), f"policy-{i}", s.router, s.corpus.video_paths)
               for i in range(res.num_policy_workers)]
    ray.get([w.ready.remote() for w in workers])
    s.pool = WorkerPool(workers, s.cfg)


def stage_index(s: Session) -> dict:
    report = build_index(s.cfg, s.corpus.videos_path, s.index_dir)
    print(report.summary())
    return {"indexed": report.indexed, "failures": len(report.failures),
            "videos_per_s": report.videos_per_s, "model_id": report.model_id}


async def _topk(s: Session, queries: list[Query], k: int) -> dict[str, list[str]]:
    hits = await asyncio.gather(*[s.retriever.search(q.text, None, k) for q in queries])
    return {q.query_id: h.video_ids for q, h in zip(queries, hits, strict=True)}


def grpo_only_videos(train: list[Query], fraction: float, seed: int) -> set[str]:
    """The train videos whose queries SFT never sees and GRPO trains on: RL on what the cold
    start memorised has little left to learn (train.grpo_video_fraction says more)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"train.grpo_video_fraction must be in [0, 1), got {fraction}")
    videos = sorted({q.video_id for q in train})
    n = round(fraction * len(videos))
    return set(np.random.default_rng([seed, 2]).choice(videos, size=n, replace=False)) if n else set()


def stage_queries(train: list[Query], stage: str, fraction: float, seed: int) -> list[Query]:
    """The train queries the "sft" or "grpo" stage trains on."""
    held = grpo_only_videos(train, fraction, seed)
    if not held:
        return train
    return [q for q in train if (q.video_id in held) == (stage == "grpo")]


def _queries_of(s: Session, stage: str) -> list[Query]:
    return stage_queries(s.corpus.queries("train"), stage, s.cfg.train.grpo_video_fraction,
                         s.cfg.train.seed)


def _sft_examples(s: Session, queries: list[Query], split: str, vectors: dict[str, np.ndarray],
                  topk: dict, wrong_per_query: int = 1) -> list:
    """SFT examples for a split's queries (their videos' moments only), from their text
    search's `topk` (`_topk`, searched once for SFT and the heads fit)."""
    cfg = s.cfg
    videos = {q.video_id for q in queries}
    wanted = {q.query_id for q in queries}
    rows = [r for r in s.corpus.rows if r["query_id"] in wanted]
    return build_sft_examples(rows, s.corpus.video_paths, vectors, topk,
                              cfg.learner.infonce_negatives, cfg.train.seed,
                              annotated=[m for m in s.corpus.annotated(split)
                                         if m["video_id"] in videos],
                              wrong_per_query=wrong_per_query)


def heldout_examples(corpus: CorpusTables, val: list[Query], vectors: dict[str, np.ndarray],
                     topk: dict, num_negatives: int, wrong_per_query: int, seed: int) -> list:
    """The turns held-out InfoNCE is measured on: each val query's first `wrong_per_query`
    wrong videos of its text search, shown and negatives drawn from the train and val splits'
    videos, as the agent's search ranks the whole index (the val split alone holds too few
    videos to be a search's pool). Never the test split's; nothing here is trained on."""
    wanted = {q.query_id for q in val}
    pool = corpus.annotated("train") + corpus.annotated("val")
    rows = [r for r in corpus.rows if r["query_id"] in wanted]
    return [e for e in build_sft_examples(rows, corpus.video_paths, vectors, topk, num_negatives,
                                          seed, annotated=pool, wrong_per_query=wrong_per_query)
            if e.answer == "not_matched"]


def stage_sft(s: Session, state: JobState) -> dict:
    cfg = s.cfg
    ids, vecs = read_embeddings(s.index_dir / "embeddings" / s.results["index"]["model_id"])
    vectors = dict(zip(ids, vecs, strict=True))
    queries = _queries_of(s, "sft")
    ranked = asyncio.run(_topk(s, queries, cfg.retrieval.topk))
    examples = _sft_examples(s, queries, "train", vectors, ranked)
    # The refined query's InfoNCE on the val queries' not-matched turns, before and after.
    val = s.corpus.queries("val")
    heldout = []
    if val:
        val_ranked = asyncio.run(_topk(s, val, cfg.retrieval.topk))
        heldout = heldout_examples(s.corpus, val, vectors, val_ranked,
                                   cfg.learner.infonce_negatives, cfg.sqr.fit_turns_per_query,
                                   cfg.train.seed)
    learner = LearnerGroup(cfg)
    learner.build("sft", s.policy_dir, s.embedder_dir,
                  ds_overrides=sft_schedule(cfg.train.sft_steps, cfg.learner))
    before = learner.sft_eval(heldout) if heldout else None
    batch = (cfg.learner.micro_batch_size * cfg.learner.grad_accum_steps
             * cfg.resources.num_learner_ranks)
    history = []
    for step in tqdm(range(cfg.train.sft_steps), desc="sft", unit="step"):
        chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        metrics = learner.sft_step(chunk)
        history.append(metrics)
        s.metrics.learner_step(metrics, stage="sft", step=step)
    fitting = cfg.sqr.fit_steps > 0
    stepped = learner.sft_eval(heldout) if heldout and fitting else None
    fit = learner.fit_heads(_sft_examples(s, queries, "train", vectors, ranked,
                                          cfg.sqr.fit_turns_per_query),
                            heldout) if fitting else None
    after = learner.sft_eval(heldout) if heldout else None
    export = s.work / "checkpoints" / "sft_export"
    learner.export_hf(export)
    asyncio.run(sync_weights(s.pool, s.router, learner.export_weights()))
    learner.shutdown()
    state.update(stage="sft", sft_export=str(export))
    out = {"steps": len(history), "first": history[0] if history else {},
           "last": history[-1] if history else {}, "export": str(export)}
    if fit:
        errors = [f"{k.replace('_', ' ')} {v[0]:.3f} -> {v[1]:.3f}" for k, v in fit.items()
                  if k != "steps"]
        print(f"sft: heads fit ({fit['steps']} steps): " + ", ".join(errors), flush=True)
        out["heads_fit"] = fit
    if heldout:
        report = heldout_report(before, after, stepped)
        if "heads_fit" in report:  # measured only when the heads were fit
            out["heads_fit"] |= report.pop("heads_fit")
        out |= report
        print(f"sft: held-out InfoNCE {out['heldout_infonce'][0]:.3f} -> "
              f"{out['heldout_infonce'][1]:.3f}, change {out['heldout_infonce_change']} "
              f"({len(heldout)} val turns)", flush=True)
        if stepped:
            share = out["heads_fit"]
            print(f"sft: of which SFT's steps -> {share['heldout_infonce'][0]:.3f}, the heads fit "
                  f"-> {share['heldout_infonce'][1]:.3f}, change "
                  f"{share['heldout_infonce_change']}", flush=True)
    return out


def prepare(cfg: Config) -> Session:
    """The session's corpus (generated or built) and model directories; nothing started."""
    from config.schema import CorpusSource
    from corpus.synth import generate_corpus, moments_of

    check_outputs_outlive_the_job(cfg)
    work = Path(cfg.paths.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if cfg.corpus.source is CorpusSource.synth:
        synth = generate_corpus(cfg.corpus.synth, work / "corpus", progress=True)
        corpus = load_corpus(synth.videos_path, synth.queries_path, moments_of(synth))
    else:
        corpus = load_built_corpus(cfg.corpus.video_dir, cfg.corpus.source)
    cfg = with_tiny_models(cfg)
    policy_dir, embedder_dir = model_dirs(cfg)
    return Session(cfg, work, corpus, policy_dir, embedder_dir, work / "index")


def open_session(cfg: Config, with_workers: bool = True) -> Session:
    """Corpus, models, Ray, the index and its router, and the policy workers."""
    s = prepare(cfg)
    cfg = s.cfg
    init_ray(cfg)
    if shortfall := cpu_shortfall(cfg, ray.cluster_resources().get("CPU", 0.0)):
        print(f"WARNING: {shortfall}", file=sys.stderr, flush=True)
    s.metrics = TrainMetrics(s.work / "tensorboard")
    s.results["index"] = stage_index(s)
    s.router = start_retrieval(cfg, s.index_dir)
    if with_workers:
        start_workers(s)
    return s


def run(cfg: Config, stages: str = "all", resume: bool = False) -> dict:
    """Run the requested stages ("all" or a comma list of index,sft,grpo,eval)."""
    wanted = STAGES if stages == "all" else tuple(stages.split(","))
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES} or 'all'")
    Stop.install()
    print(f"workdir: {cfg.paths.workdir}", flush=True)
    started = time.perf_counter()
    s = open_session(cfg, with_workers=wanted != ("index",))
    try:
        return _run_stages(s, wanted, resume, started)
    finally:  # flushes TensorBoard also when a stage fails or the job is stopped
        s.metrics.close()
        s.close()


def _run_stages(s: Session, wanted: tuple[str, ...], resume: bool, started: float) -> dict:
    cfg = s.cfg
    # A run that trains SFT starts the state afresh; one that starts later (grpo, eval) reads
    # what an earlier run of this workdir trained.
    state = JobState(s.work / "job_state.json", fresh=not resume and "sft" in wanted)
    evals: dict[str, dict] = {}
    do_eval = "eval" in wanted
    if "sft" in wanted and not (resume and state.done("sft")):
        if do_eval:
            evals["untrained"] = evaluate(s, cfg.train.eval_split, "untrained")
        s.results["sft"] = stage_sft(s, state)
        state.mark_done("sft", s.results["sft"])
        if do_eval:
            evals["sft"] = evaluate(s, cfg.train.eval_split, "sft")
    else:  # start from what an earlier run of this workdir trained, if anything
        latest = state.get("sft_export") if "grpo" in wanted else (
            state.get("grpo_export") or state.get("sft_export"))
        if latest and s.pool:
            asyncio.run(sync_weights(s.pool, s.router, weights_from_export(Path(latest))))
        s.results["start_weights"] = latest or str(s.policy_dir)
    if "grpo" in wanted:
        s.results["grpo"] = stage_grpo(s, _queries_of(s, "grpo"), state, resume)
        state.mark_done("grpo", s.results["grpo"])
        state.update(grpo_export=s.results["grpo"]["export"])
        if do_eval:
            evals["grpo"] = evaluate(s, cfg.train.eval_split, "grpo")
    if do_eval and not evals:
        evals["latest"] = evaluate(s, cfg.train.eval_split, "latest")
    # A run that trains nothing (index, eval) reports beside the training run's results.
    trained = "sft" in wanted or "grpo" in wanted
    out = s.work / ("results" if trained else "results-" + "-".join(wanted))
    return _report(s, evals, out, time.perf_counter() - started)


PAIRS = (("grpo", "sft"), ("sft", "untrained"))  # (better-hoped, baseline) of the same queries


def _report(s: Session, evals: dict, out: Path, seconds: float) -> dict:
    from evaluation.metrics import paired
    from evaluation.report import comparison_table, interval_table, plot, refinement_line

    out.mkdir(exist_ok=True)
    differences = {f"{a}-{b}": paired(evals[a], evals[b]) for a, b in PAIRS
                   if a in evals and b in evals}
    summary = {"seconds": round(seconds, 1), "stages": s.results,
               "eval": evals | ({"paired": differences} if differences else {}),
               "retried_groups": s.pool.retried_groups if s.pool else 0,
               "plot": str(plot(s.metrics.history, evals, out / "training.png"))}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "history.json").write_text(json.dumps(s.metrics.history, indent=2, default=float))
    if evals:
        print(comparison_table(evals))
        print(interval_table(evals, differences))
        print(refinement_line(evals))
    print(f"results -> {out}")
    return {"seconds": summary["seconds"], "workdir": str(s.work),
            "results": str(out / "results.json")}
