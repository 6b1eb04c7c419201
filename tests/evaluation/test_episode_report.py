"""The episode report: one self-contained page, every query and turn in it, images that decode,
model output shown as text (never as markup)."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
from PIL import Image

from evaluation.episode_report import frame_strip, gt_rank, render_report, write_report


def _turn(qid, turn, shown, answer, response, retrieved, gt="v1"):
    return {"query_id": qid, "turn": turn, "query_text": f"query {qid}", "gt_video_id": gt,
            "gt_start": 2.0, "gt_end": 6.0, "video_id": shown, "answer": answer,
            "pred_start": 2.0 if answer == "matched" else None,
            "pred_end": 5.0 if answer == "matched" else None, "is_final": False,
            "retrieved_ids": retrieved, "retrieved_scores": [0.5] * len(retrieved),
            "response_text": response, "reward": 1.0, "episode_reward": 1.5}


PREDS = pa.Table.from_pylist([
    _turn("q1", 1, "v2", "not_matched", "<think>red blue differs</think>", ["v2", "v1", "v3"]),
    _turn("q1", 2, "v1", "matched", "<answer>matched</answer>", ["v1", "v3"]),
    _turn("q2", 1, "v3", None, "</td><script>alert(1)</script>[/red]", ["v3", "v2"], gt="v9"),
])


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.queries, self.scripts, self.rows = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "div" and a.get("class") == "query":
            self.queries.append(a["id"])
        self.scripts += tag == "script"
        self.rows += tag == "tr" and a.get("class") in ("ok", "bad")


def _frames(video_id: str) -> np.ndarray:
    value = {"v1": 40, "v2": 120, "v3": 200}[video_id]
    return np.full((16, 8, 10, 3), value, np.uint8)


def test_every_query_and_turn_is_on_the_page_with_images_that_decode(tmp_path):
    path = write_report(PREDS, _frames, {"queries": 2, "VR": 50.0}, tmp_path / "report.html", "sft")
    page = Page()
    page.feed(path.read_text())
    assert page.queries == ["q1", "q2"] and page.rows == 3
    assert page.scripts == 0  # model output is text
    assert len(page.images) == 3
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.size == (8 * 10, 8)  # 8 thumbnails of 10 x 8 side by side
    assert "&lt;script&gt;" in path.read_text() and "[/red]" in path.read_text()


def test_ground_truth_rank_in_the_turns_search():
    assert gt_rank(PREDS.to_pylist()[0]) == "2"
    assert gt_rank(PREDS.to_pylist()[2]) == ">2"


def test_a_short_video_gives_as_many_thumbnails_as_it_has_frames():
    uri = frame_strip(np.zeros((3, 4, 5, 3), np.uint8))
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (15, 4)


def test_the_summary_heads_the_page():
    html = render_report(PREDS, _frames, {"queries": 2, "reward": 1.25}, "grpo")
    assert html.index("id='summary'") < html.index("class='query'") and "1.250" in html
