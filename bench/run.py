"""Runs the benchmarks and writes every number to bench/results.json (BENCHMARKS.md summarises
them)."""

from __future__ import annotations

import importlib
import json
import platform
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
SUITES = ["retrieval", "rollout", "learner", "e2e", "trl_compare", "parse"]


def cpu_model() -> str:
    """The CPU's model name: timings from two hosts of the same size differ 2-3x."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def machine() -> dict:
    """Where and when a suite ran; each suite keeps its own, as `--only` reruns one suite."""
    return {"cpu": cpu_model(), "cpus": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d")}


def main(only: list[str]) -> int:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    failed = 0
    for name in only or SUITES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"[bench] {name}: not available")
            continue
        started = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            results[name] = module.run({})
            results[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
            results[name]["machine"] = machine()
        except Exception:  # noqa: BLE001 - one broken suite must not hide the others
            failed += 1
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc(limit=3)}
        RESULTS.write_text(json.dumps(results, indent=2, default=float))
        print(json.dumps(results[name], indent=2, default=float))
    print(f"[bench] results -> {RESULTS}")
    return 1 if failed else 0
