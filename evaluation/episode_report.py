"""One self-contained HTML page per evaluation: what the policy saw, said and earned, query by
query, so a run can be judged by looking at episodes and not only at averages."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from evaluation.metrics import as_rows

THUMBS_PER_TURN = 8
STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
.query{margin:1.2em 0;padding:.6em;border:1px solid #bbb;border-radius:6px}
.ok{background:#e6f4e6}.bad{background:#fbe9e9}.strip{image-rendering:pixelated;height:48px}
pre{white-space:pre-wrap;margin:0;font-size:12px;max-width:70em}"""


def frame_strip(frames: np.ndarray, count: int = THUMBS_PER_TURN) -> str:
    """Up to `count` frames spread over the video, side by side, as a data: URI (PNG)."""
    picks = frames[np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(picks), axis=1)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gt_rank(row: dict) -> str:
    """The ground truth's place in this turn's search results, or '>k' when it was not in them."""
    ids = list(row["retrieved_ids"] or [])
    return str(ids.index(row["gt_video_id"]) + 1) if row["gt_video_id"] in ids else f">{len(ids)}"


def _span(start, end) -> str:
    return "—" if start is None or end is None else f"{start:.1f}–{end:.1f} s"


def _turn_row(row: dict, strip: str) -> str:
    right = row["video_id"] == row["gt_video_id"]
    verdict_ok = (row["answer"] == "matched") == right
    cells = [
        str(row["turn"]),
        f'<img class="strip" alt="frames of {html.escape(row["video_id"])}" src="{strip}"><br>'
        f'{html.escape(row["video_id"])} ({"the ground truth" if right else "wrong video"})',
        f"<pre>{html.escape(row['response_text'] or '')}</pre>",
        html.escape(str(row["answer"])),
        _span(row["pred_start"], row["pred_end"]),
        gt_rank(row),
        f"{row['reward']:.2f}",
    ]
    return f'<tr class="{"ok" if verdict_ok else "bad"}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_report(preds: pa.Table, frames_of: Callable[[str], np.ndarray], summary: dict,
                  title: str) -> str:
    """The page for one evaluation: a summary table, then per query its turns in order.
    `frames_of(video_id)` gives the frames the policy saw (uint8 [T, H, W, 3])."""
    rows = sorted(as_rows(preds), key=lambda r: (r["query_id"], r["turn"]))
    strips: dict[str, str] = {}
    by_query: dict[str, list[dict]] = {}
    for r in rows:
        by_query.setdefault(r["query_id"], []).append(r)
        if r["video_id"] not in strips:
            strips[r["video_id"]] = frame_strip(frames_of(r["video_id"]))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in summary)
    values = "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                     for v in summary.values())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<table id='summary'><tr>{head}</tr><tr>{values}</tr></table>"]
    for qid, turns in by_query.items():
        first = turns[0]
        parts.append(
            f"<div class='query' id='{html.escape(qid, quote=True)}'><b>{html.escape(qid)}</b>: "
            f"{html.escape(first['query_text'])} — ground truth {html.escape(first['gt_video_id'])}, "
            f"{_span(first['gt_start'], first['gt_end'])}; episode reward {first['episode_reward']:.2f}"
            "<table><tr><th>turn</th><th>shown video</th><th>response</th><th>verdict</th>"
            "<th>moment</th><th>ground truth's rank</th><th>reward</th></tr>"
            + "".join(_turn_row(t, strips[t["video_id"]]) for t in turns) + "</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(preds: pa.Table, frames_of: Callable[[str], np.ndarray], summary: dict,
                 path: Path, title: str) -> Path:
    path.write_text(render_report(preds, frames_of, summary, title), encoding="utf-8")
    return path
