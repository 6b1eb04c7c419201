"""Several seeds of one job, pooled: what a claim about learning needs when one seed's table
moves by a few queries. Each seed's run is an ordinary job in a workdir of its own; this
module only reads their results.json files."""

from __future__ import annotations

import numpy as np

from evaluation.bootstrap import mean_ci
from evaluation.report import CI_COLUMNS, interval_text, refinement_line, signed_text

TAGS = ("untrained", "sft", "grpo")


def pooled(results: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{tag: {metric: [mean, low, high]}} over every seed: each query's value averaged over the
    seeds, then a bootstrap over queries (a query is the unit the seeds share, so resampling
    (query, seed) pairs would count one query's seeds as independent)."""
    out = {}
    for tag in TAGS:
        runs = [r["eval"][tag]["per_query"] for r in results if tag in r["eval"]]
        if not runs:
            continue
        out[tag] = {}
        for metric in CI_COLUMNS:
            per_query: dict[str, list[float]] = {}
            for run in runs:
                for q, values in run.items():
                    if metric in values:
                        per_query.setdefault(q, []).append(values[metric])
            if per_query:
                out[tag][metric] = _over_queries(per_query)
    return out


def _over_queries(per_query: dict[str, list[float]]) -> list[float]:
    """[mean, low, high]: each query's values averaged over its seeds, then resampled by query."""
    means = [float(np.mean(v)) for v in per_query.values()]
    return [float(np.mean(means)), *mean_ci(means)]


def pooled_difference(results: list[dict], a: str, b: str) -> dict[str, list[float]]:
    """{metric: [mean, low, high]} of a − b: per query the difference averaged over the seeds
    that evaluated both, then a bootstrap over queries (the paired test of the pooled runs)."""
    out = {}
    for metric in CI_COLUMNS:
        per_query: dict[str, list[float]] = {}
        for r in results:
            qa, qb = r["eval"].get(a, {}).get("per_query", {}), r["eval"].get(b, {}).get("per_query", {})
            for q in sorted(qa.keys() & qb.keys()):  # a set's order varies by process
                if metric in qa[q] and metric in qb[q]:
                    per_query.setdefault(q, []).append(qa[q][metric] - qb[q][metric])
        if per_query:
            out[metric] = _over_queries(per_query)
    return out


def seeds_table(seeds: list[int], results: list[dict]) -> str:
    """The pooled table (mean [95 % CI]) and, per seed, GRPO − SFT with its paired interval."""
    head = f"{'pooled':<14}" + "".join(f"{c:>22}" for c in CI_COLUMNS)
    lines = [f"{len(seeds)} seeds: {', '.join(map(str, seeds))}", head, "-" * len(head)]
    for tag, metrics in pooled(results).items():
        lines.append(f"{tag:<14}" + "".join(
            f"{signed_text(metrics[c][0], c).lstrip('+')} {interval_text(metrics[c][1:], c)}".rjust(22)
            if c in metrics else f"{'—':>22}" for c in CI_COLUMNS))
    lines += ["", f"{'grpo - sft':<14}" + "".join(f"{c:>22}" for c in CI_COLUMNS)]
    wins = 0
    for seed, r in zip(seeds, results, strict=True):
        diff = r["eval"].get("paired", {}).get("grpo-sft", {})
        wins += bool(diff.get("reward") and diff["reward"][0] > 0)
        lines.append(f"{'seed ' + str(seed):<14}" + "".join(
            f"{signed_text(diff[c][0], c)} {interval_text(diff[c][1:], c)}".rjust(22)
            if c in diff else f"{'—':>22}" for c in CI_COLUMNS))
    both = pooled_difference(results, "grpo", "sft")
    lines.append(f"{'pooled':<14}" + "".join(
        f"{signed_text(both[c][0], c)} {interval_text(both[c][1:], c)}".rjust(22)
        if c in both else f"{'—':>22}" for c in CI_COLUMNS))
    lines.append(f"GRPO above SFT on mean test reward in {wins} of {len(seeds)} seeds")
    lines.append("")
    above: dict[str, list[int]] = {}  # tag -> [seeds where refined beat next, seeds measured]
    for seed, r in zip(seeds, results, strict=True):
        lines.append(f"seed {seed}: " + refinement_line(r["eval"]))
        for tag, m in r["eval"].items():
            if diff := m.get("refinement", {}).get("VR_refined_minus_next"):
                count = above.setdefault(tag, [0, 0])
                count[0] += diff[0] > 0
                count[1] += 1
    lines.append("VR@SQR above VR@next in " + (", ".join(
        f"{n} of {seen} seeds ({tag})" for tag, (n, seen) in above.items()) or "no seed"))
    return "\n".join(lines)
