"""parse_response speed: it runs on every sampled turn, on text the policy may have garbled.
Workload: a well-formed turn, and 1 MB of each adversarial repetition (unclosed tags, which a
lazy regex once scanned quadratically: 80,000 characters took 9-13 s). Target: 1 MB < 0.1 s."""

from __future__ import annotations

import time

from models.parsing import parse_response

GOOD = ("<think>The video shows a red circle moves left on a navy background from 2 to 6 seconds."
        "</think> <answer>matched</answer> <start>2.0</start> <end>6.0</end> <REFINE>")
ADVERSARIAL = {"unclosed_think": "<think>", "think_then_answer": "<think>x<answer>",
               "time_tags": "<start><end>", "refine": "<REFINE>"}
SIZE = 1_000_000


def _seconds(text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            parse_response(text)
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def run(_: dict) -> dict:
    out = {"workload": f"parse_response on a well-formed turn and on {SIZE:,} characters of each "
                       "repeated unclosed tag; best of 3",
           "well_formed_us": round(_seconds(GOOD, 2000) * 1e6, 2)}
    for name, unit in ADVERSARIAL.items():
        out[f"{name}_1mb_s"] = round(_seconds(unit * (SIZE // len(unit)), 1), 4)
    out["worst_1mb_s"] = max(v for k, v in out.items() if k.endswith("_1mb_s"))
    out["target_1mb_s"] = 0.1
    out["met"] = out["worst_1mb_s"] < out["target_1mb_s"]
    return out
