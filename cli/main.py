"""Subcommands. Heavy imports stay inside the commands so that `--help` is instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from config import ConfigError, load_config, to_yaml

app = typer.Typer(help="VideoSearch-R1 on Ray: train and evaluate a video search agent.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
corpus_app = typer.Typer(help="Build or import a video corpus.", no_args_is_help=True)
models_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(models_app, name="models")
experiment_app = typer.Typer(help="Experiments over several runs.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
# Literal text everywhere: messages carry paths, config values and model output, and rich
# markup would eat "[start, end]" and choke on "[/red]".
console = Console(markup=False, highlight=False, soft_wrap=True)

CONFIG_OPT = typer.Option(["cpu_tiny"], "--config", "-c",
                          help="Preset name in configs/ or a YAML path; repeat to layer "
                          "presets, later ones win (e.g. -c charades_fig -c local_tiny).")
OVERRIDES_ARG = typer.Argument(None, help="key=value overrides, e.g. rollout.group_size=4")


def _cfg(config: list[str], overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        console.print(f"config error: {exc}", style="red")
        raise typer.Exit(2) from None


@app.command()
def doctor() -> None:
    """Check that the installed stack imports (torch, torchvision, vLLM, DeepSpeed, ...)."""
    import importlib

    failed = []
    for name in ["torch", "torchvision", "transformers", "vllm", "deepspeed", "faiss",
                 "decord", "av", "ray", "pyarrow", "omegaconf"]:
        try:
            mod = importlib.import_module(name)
            console.print(f"  {name:13s} {getattr(mod, '__version__', '?')}")
        except Exception as exc:  # noqa: BLE001 - report every broken import at once
            failed.append(name)
            console.print(f"  {name:13s} {type(exc).__name__}: {exc}", style="red")
    from transformers import Qwen3VLProcessor  # noqa: F401 - needs a working torchvision

    if failed:
        raise typer.Exit(1)


@app.command("config")
def show_config(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Print the resolved configuration."""
    console.print(to_yaml(_cfg(config, overrides)))


@corpus_app.command("synth")
def corpus_synth(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Generate the deterministic synthetic corpus into <workdir>/corpus."""
    from corpus.synth import generate_corpus

    cfg = _cfg(config, overrides)
    out = generate_corpus(cfg.corpus.synth, Path(cfg.paths.workdir) / "corpus", progress=True)
    console.print(f"{out.num_videos} videos, {out.num_queries} queries -> {out.out_dir}")


@corpus_app.command("build")
def corpus_build(
    fmt: str = typer.Option(..., "--format", help="charades | fig | didemo | activitynet"),
    annotations: list[str] = typer.Option(..., "--annotations", help="SPLIT=PATH, once per "
                                          "split (train, val, test)"),
    videos: Path = typer.Option(..., "--videos", help="folder of video files (searched "
                                "recursively: .mp4 .mkv .webm .avi .mov)"),
    out: Path = typer.Option(..., "--out", help="corpus directory to write; a rerun probes "
                             "only files it has not probed yet"),
    strict: bool = typer.Option(False, help="fail on the first problem instead of reporting it"),
) -> None:
    """Build videos.parquet + queries.parquet from a folder of videos and annotation files,
    probing every video (Ray Data), with a report of everything left out. Train on it with
    corpus.source=<format> corpus.video_dir=<out>."""
    import logging

    import ray.data  # noqa: F401 - configures its loggers on import; quieten them after

    from corpus.build import REPORT, BuildError, build_corpus
    from corpus.readers import READERS

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the build's own bar says enough

    if fmt not in READERS:
        console.print(f"unknown --format {fmt!r}; one of: {', '.join(READERS)}", style="red")
        raise typer.Exit(2)
    files = {}
    for item in annotations:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            console.print(f"--annotations {item!r} is not SPLIT=PATH", style="red")
            raise typer.Exit(2)
        if split in files:
            console.print(f"--annotations gives split {split!r} twice", style="red")
            raise typer.Exit(2)
        files[split] = path
    try:
        report = build_corpus(fmt, files, videos, out, strict=strict)
    except BuildError as exc:
        console.print(f"corpus build failed: {exc}", style="red")
        raise typer.Exit(1) from None
    console.print(report.summary())
    console.print(f"report -> {Path(report.out_dir) / REPORT}")


@models_app.command("tiny")
def models_tiny(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG,
                force: bool = typer.Option(False, help="build here even if cached or shipped"),
                ship: bool = typer.Option(False, help="then copy them into tiny/shipped/ "
                                          "(hash manifest) for the repository")) -> None:
    """Build the tiny Qwen3-VL policy and embedder into the model cache (or copy the shipped
    ones in, when they were built from the same recipe)."""
    from tiny.build import build_tiny_models, ship_tiny_models

    cfg = _cfg(config, overrides)
    dirs = build_tiny_models(cfg.paths.model_cache, video=cfg.video,
                             pretrain=cfg.model.tiny_pretrain,
                             soft_tokens=cfg.sqr.num_tokens, seed=cfg.model.seed, force=force)
    console.print(f"policy: {dirs[0]}\nembedder: {dirs[1]}")
    if ship:
        console.print(f"shipped -> {ship_tiny_models(cfg.paths.model_cache)}")


@app.command()
def train(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG,
          stages: str = typer.Option("all", help="all, or a comma list of index,sft,grpo,eval"),
          resume: bool = typer.Option(False, "--resume",
                                      help="continue a killed job from its last checkpoint")) -> None:
    """Run the training job: corpus -> models -> index -> SFT -> GRPO -> eval.

    Starts a local Ray cluster unless RAY_ADDRESS is set (as under `ray job submit`)."""
    from actors.driver import run

    cfg = _cfg(config, overrides)
    summary = run(cfg, stages=stages, resume=resume)
    console.print_json(json.dumps(summary))


@app.command("eval")
def evaluate(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Greedy multi-turn evaluation of the configured policy on train.eval_split."""
    from actors.driver import run

    summary = run(_cfg(config, overrides), stages="eval")
    console.print_json(json.dumps(summary))


@app.command()
def index(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Embed the corpus videos (Ray Data, resumable) and write the FAISS shards."""
    from actors.driver import run

    summary = run(_cfg(config, overrides), stages="index")
    console.print_json(json.dumps(summary))


@app.command()
def serve(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Serve the search engine over HTTP (Ray Serve): POST /search, POST /score, GET /healthz.

    Uses the index built by `index` under <workdir>/index; binds retrieval.serve_host
    (127.0.0.1 by default). Runs until interrupted."""
    import time

    from actors.driver import init_ray
    from actors.retrieval import start_retrieval
    from retrieval_service.serve_app import serve_retrieval
    from tiny.build import with_tiny_models

    cfg = with_tiny_models(_cfg(config, overrides))
    init_ray(cfg)
    router = start_retrieval(cfg, Path(cfg.paths.workdir) / "index")
    console.print(f"serving on {serve_retrieval(router, cfg.retrieval)} (Ctrl-C to stop)")
    while True:
        time.sleep(3600)


@experiment_app.command("seeds")
def experiment_seeds(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG,
                     n: int = typer.Option(3, "--n", min=1, help="how many seeds (0..n-1)")) -> None:
    """Run the job once per train.seed (each in <workdir>/seeds/seed<i>; a finished seed is
    reused) and print the pooled table with 95 % CIs and each seed's GRPO − SFT."""
    import subprocess

    from evaluation.seeds import seeds_table

    cfg = _cfg(config, overrides)
    root = Path(cfg.paths.workdir) / "seeds"
    seeds, results = list(range(n)), []
    for seed in seeds:
        work = root / f"seed{seed}"
        done = work / "results" / "results.json"
        if done.is_file():
            console.print(f"seed {seed}: finished earlier, reusing {done}")
        else:
            work.mkdir(parents=True, exist_ok=True)
            log = work / "train.log"
            console.print(f"seed {seed}: training, log -> {log}")
            with log.open("w") as out:
                layers = [arg for name in config for arg in ("--config", name)]
                rc = subprocess.call([sys.executable, "-m", "cli", "train", *layers,
                                      *(overrides or []), f"train.seed={seed}", f"paths.workdir={work}"],
                                     stdout=out, stderr=subprocess.STDOUT)
            if rc != 0 or not done.is_file():
                console.print(f"seed {seed} failed (exit {rc}); see {log}", style="red")
                raise typer.Exit(1)
        results.append(json.loads(done.read_text()))
    table = seeds_table(seeds, results)
    (root / "seeds.txt").write_text(table + "\n")
    console.print(table)
    console.print(f"-> {root / 'seeds.txt'}")


@experiment_app.command("sqr-oracle")
def experiment_sqr_oracle(config: list[str] = CONFIG_OPT, overrides: list[str] = OVERRIDES_ARG,
                          split: str = typer.Option("test", help="the queries to refine"),
                          steps: int = typer.Option(300, min=0, help="Adam steps per query"),
                          lr: float = typer.Option(0.002, min=0.0, help="Adam's learning rate (0.05 diverges)"),
                          negatives: int = typer.Option(0, help="InfoNCE negatives per query "
                                                        "(0: learner.infonce_negatives as in "
                                                        "SFT; -1: every other video)")) -> None:
    """The best refinement the embedder allows: free soft-token inputs optimised per query
    against the ground truth (InfoNCE, the same hard negatives), VR@oracle vs VR@next.
    Reads the workdir's index (run `index` or `train` first)."""
    from dataclasses import asdict

    from actors.driver import prepare
    from evaluation.sqr_oracle import sqr_oracle
    from retrieval_service.embedder import Embedder, model_id
    from retrieval_service.indexing import read_embeddings

    s = prepare(_cfg(config, overrides))
    cfg = s.cfg
    mid = model_id(s.embedder_dir, cfg.model.embed_instruction, cfg.video)
    ids, vectors = read_embeddings(s.index_dir / "embeddings" / mid)
    if not ids:
        console.print(f"no embeddings for this embedder under {s.index_dir}: run `index` first",
                      style="red")
        raise typer.Exit(1)
    queries = [(q.text, q.video_id) for q in s.corpus.queries(split)]
    embedder = Embedder.from_config(cfg, s.embedder_dir, device="cpu")
    k = {0: cfg.learner.infonce_negatives, -1: len(ids) - 2}.get(negatives, negatives)
    result = sqr_oracle(embedder, queries, ids, vectors, cfg.sqr.num_tokens, k, steps=steps,
                        lr=lr, tau=cfg.learner.infonce_tau)
    out = s.work / "results" / f"sqr_oracle_k{k}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(result), indent=1))
    console.print(f"{k} negatives; {result.refined_turns} {split} queries the text search misses: VR@next "
                  f"{result.vr_next:.1f}, VR@oracle {result.vr_oracle:.1f}; ground truth's mean "
                  f"rank {result.rank_before:.1f} -> {result.rank_after:.1f}; InfoNCE "
                  f"{result.infonce_before:.3f} -> {result.infonce_after:.3f}  -> {out}")


@app.command()
def bench(only: str = typer.Option("", help="comma-separated benchmark names")) -> None:
    """Run the benchmarks; results go to bench/results.json (summarised in BENCHMARKS.md)."""
    from bench.run import main

    sys.exit(main([n for n in only.split(",") if n]))
