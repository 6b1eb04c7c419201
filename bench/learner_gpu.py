"""Learner step time and GPU memory at the Qwen3-VL-2B shape, on one CUDA GPU.

No weights can be downloaded here, so the policy is Qwen3-VL-2B-Instruct's architecture with
random weights (its config's dimensions: 28 layers of 2048, 151936-token vocabulary, a 24-layer
vision tower) and the tiny tokenizer. The workload is one learner rank's share of a
`qwen3vl_2b` GRPO step: ROWS turns whose prompts hold a 64-frame 448x448 video (the preset's
video settings, ~6.3k video tokens) and 512-token responses, the KL reference on, one optimizer
update; no Ray. Each setting (micro-batch size, gradient checkpointing) builds a fresh Learner,
takes a warm-up step and TIMED timed ones; a setting that runs out of GPU memory is recorded as
such. Run on a CUDA machine (`make bench` does not: it is the CPU suite):

    python -m bench.learner_gpu --out bench/results_gpu.json
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import typer

from bench.gpu_shapes import build_model, cuda_seconds, preset_videos, qwen3vl_2b_config
from bench.turns import synthetic_samples

ROWS, P, RESPONSE, TIMED = 16, 4, 512, 2


def build_turns(cfg, policy_dir: Path, corpus_dir: Path) -> list:
    corpus = preset_videos(cfg, P, corpus_dir)
    paths = [str(corpus.out_dir / f"videos/synth_{p:04d}.mp4") for p in range(P)]
    return synthetic_samples(cfg.video, policy_dir, paths, ROWS // P, RESPONSE)


def measure(cfg, policy_dir: Path, turns: list) -> dict:
    """One setting: build, warm up, time; an out-of-memory error is a result, not a failure."""
    from learner.learner import Learner

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    learner = None
    out: dict = {}
    try:
        learner = Learner(cfg, "grpo", policy_dir)
        out["build_seconds"] = time.perf_counter() - started
        seconds = cuda_seconds(TIMED, learner.grpo_step, turns)
        tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
        out.update(step_seconds=statistics.median(seconds), tokens_per_s=tokens / min(seconds))
    except torch.OutOfMemoryError as err:
        out["oom"] = str(err).splitlines()[0]
    finally:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if learner is not None:
            learner.close()
        del learner
        gc.collect()
        torch.cuda.empty_cache()
    return out


def main(out: Path = typer.Option(Path("bench/results_gpu.json"), help="results JSON"),
         setting: list[str] = typer.Option(["4:0", "4:1"], help="MICRO_BATCH:CHECKPOINTING"),
         tag: str = typer.Option("", help="a name for this code version in the results")):
    if not torch.cuda.is_available():
        raise typer.BadParameter("this benchmark needs a CUDA GPU (make bench is the CPU suite)")
    from config import load_config
    from learner.engine import close_distributed, init_single_rank
    from tiny.tokenizer import train_tokenizer

    results = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = load_config("qwen3vl_2b", [f"paths.workdir={work}"])
        tokenizer = train_tokenizer()
        policy_dir = build_model(work / "policy", base, tokenizer, qwen3vl_2b_config(tokenizer))
        turns = build_turns(base, policy_dir, work / "corpus")
        init_single_rank()
        runs = {}
        for mb, ckpt in (map(int, s.split(":")) for s in setting):
            overrides = [f"learner.micro_batch_size={mb}", f"learner.grad_accum_steps={ROWS // mb}",
                         f"learner.gradient_checkpointing={bool(ckpt)}"]
            cfg = load_config("qwen3vl_2b", [f"paths.workdir={work}", "learner.zero_stage=2",
                                             "learner.logprob_mismatch_warn=1e9", *overrides])
            name = f"{tag}micro{mb}_ckpt{ckpt}"
            runs[name] = measure(cfg, policy_dir, turns)
            print(name, json.dumps(runs[name]), flush=True)
        close_distributed()
    report = results.setdefault("learner", {})
    report.setdefault("runs", {}).update(runs)
    report["workload"] = (
        f"1 GPU ({torch.cuda.get_device_name()}), ZeRO-2 bf16, Qwen3-VL-2B shape (random weights), "
        f"{ROWS} GRPO turns per optimizer step: {len(turns[0].prompt_ids)}-token prompts with a "
        f"64-frame 448x448 video, {RESPONSE}-token responses, KL reference on")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
