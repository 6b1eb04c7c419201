"""Search-engine encoding throughput at the Qwen3-VL-Embedding-2B shape, on one CUDA GPU: how
fast an index of a real corpus can be built, and how many queries (plain and with 8 soft
tokens, as SQR refines them) one GPU encodes.

The embedder is the 2B architecture with random weights (bench/gpu_shapes.py), bf16; videos are
synthetic, decoded once on the CPU to the `qwen3vl_2b` preset's 64 frames of 448 x 448, and the
decode rate is reported apart (in the index build Ray Data decodes on CPU tasks while the GPU
actors embed). Run on a CUDA machine:

    python -m bench.embedder_gpu --out bench/results_gpu.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import typer

from bench.gpu_shapes import build_model, cuda_seconds, preset_videos, qwen3vl_2b_config

VIDEOS, QUERIES, TIMED = 8, 256, 3
TVR_VIDEOS = 21_793  # TVRetrieval's corpus, for the index-build estimate


def timed(fn, *args) -> float:
    return statistics.median(cuda_seconds(TIMED, fn, *args))


def main(out: Path = typer.Option(Path("bench/results_gpu.json"), help="results JSON"),
         video_batch: list[int] = typer.Option([1, 4, 8], help="videos per forward"),
         query_batch: int = typer.Option(64, help="queries per forward")):
    if not torch.cuda.is_available():
        raise typer.BadParameter("this benchmark needs a CUDA GPU (make bench is the CPU suite)")
    from config import load_config
    from retrieval_service.embedder import Embedder
    from tiny.tokenizer import train_tokenizer

    results = json.loads(out.read_text()) if out.is_file() else {}
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = load_config("qwen3vl_2b", [f"paths.workdir={work}"])
        tokenizer = train_tokenizer()
        config = qwen3vl_2b_config(tokenizer)
        policy_dir = build_model(work / "policy", cfg, tokenizer, config)
        embedder_dir = build_model(work / "embedder", cfg, tokenizer, config, policy=False)
        corpus = preset_videos(cfg, VIDEOS, work / "corpus")
        embedder = Embedder.from_config(cfg, embedder_dir, policy_dir, dtype="bfloat16",
                                        device="cuda")
        paths = sorted((corpus.out_dir / "videos").glob("*.mp4"))
        started = time.perf_counter()
        videos = [embedder.decode(p) for p in paths]
        report["decode_videos_per_s_one_cpu_process"] = len(videos) / (time.perf_counter() - started)
        report["frames_per_video"] = int(videos[0].frames.shape[0])
        for b in video_batch:
            batch = (videos * b)[:b]
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                seconds = timed(embedder.encode_videos, batch)
            report[f"videos_per_s_batch{b}"] = b / seconds
            report[f"peak_gib_batch{b}"] = torch.cuda.max_memory_allocated() / 2**30
        best = max(report[f"videos_per_s_batch{b}"] for b in video_batch)
        report["tvr_index_gpu_hours_one_gpu"] = TVR_VIDEOS / best / 3600
        texts = [f"a person walks to the door and opens it, take {i}" for i in range(QUERIES)]
        soft = torch.randn(query_batch, *embedder.soft_shape)
        with torch.no_grad():
            plain = timed(lambda: [embedder.encode_queries(texts[i:i + query_batch])
                                   for i in range(0, QUERIES, query_batch)])
            refined = timed(lambda: [embedder.encode_queries(texts[i:i + query_batch], soft)
                                     for i in range(0, QUERIES, query_batch)])
        report["queries_per_s"] = QUERIES / plain
        report["refined_queries_per_s"] = QUERIES / refined
    report["workload"] = (f"1 GPU ({torch.cuda.get_device_name()}), bf16, Qwen3-VL-Embedding-2B "
                          f"shape (random weights), {report['frames_per_video']}-frame 448x448 "
                          f"videos, queries in batches of {query_batch}")
    print(json.dumps(report, indent=2), flush=True)
    results["embedder"] = report
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
