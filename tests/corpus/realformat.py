"""A mini corpus in the public datasets' real formats, as a user brings one: a folder of
H.264 and MPEG-4 files of different sizes, frame rates and durations (one truncated past
use, one truncated but readable, one named and missing), and annotation files in the four
formats, each with valid and malformed rows. `EXPECTED` says what a build must make of it."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

# video id -> (file name, codec, width, height, fps, seconds)
VIDEOS = {
    "AX01": ("AX01.mp4", "libx264", 96, 64, 25, 14),
    "BX02": ("BX02.mp4", "libx264", 160, 90, 30, 10),
    "CX03": ("CX03.mov", "libx264", 48, 48, 10, 12),
    "DX04": ("DX04.avi", "mpeg4", 80, 48, 15, 20),
    "EX05": ("nested/EX05.mkv", "mpeg4", 128, 96, 24, 9),
    "FX06": ("FX06.mkv", "libx264", 64, 64, 12, 16),
    "GX07": ("GX07.mp4", "mpeg4", 112, 64, 20, 11),
    "HX08": ("HX08.webm", "libx264", 72, 48, 8, 15),
    "TRUNC": ("TRUNC.mp4", "libx264", 96, 64, 25, 8),  # cut in half: no index, undecodable
    "SHORT": ("SHORT.avi", "mpeg4", 80, 48, 15, 20),  # cut in half: decodes ~9 s of 20
}
MISSING = "MISS9"
TRAIN = ["AX01", "BX02", "CX03", "DX04", "EX05", "SHORT"]
TEST = ["FX06", "GX07", "HX08"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200),
           (40, 200, 200), (240, 240, 240), (120, 60, 20), (90, 90, 90), (10, 120, 60)]


def _encode(path: Path, codec: str, w: int, h: int, fps: int, seconds: int, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="matroska" if path.suffix == ".webm" else None) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(fps * seconds):
            frame = np.zeros((h, w, 3), np.uint8)
            x = (i * 3) % max(1, w - 16)
            frame[h // 4: h // 4 + 16, x: x + 16] = colour
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())


def write_videos(root: Path) -> Path:
    folder = root / "videos"
    for i, (name, codec, w, h, fps, secs) in enumerate(VIDEOS.values()):
        _encode(folder / name, codec, w, h, fps, secs, COLOURS[i])
    for name in ("TRUNC.mp4", "SHORT.avi"):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not a video")
    return folder


def _queries(ids: list[str]) -> list[tuple[str, float, float, str]]:
    """Two good spans per video, the second near the end of the 9-second readable part."""
    return [q for v in ids for q in ((v, 1.0, 4.0, f"the shape of {v} moves right"),
                                     (v, 5.0, 8.0, f"the shape of {v} keeps moving"))]


def write_charades(root: Path) -> dict[str, Path]:
    files = {}
    for split, ids in (("train", TRAIN), ("test", TEST)):
        lines = [f"{v} {s} {e}##{text}" for v, s, e, text in _queries(ids)]
        if split == "train":
            lines += [
                "AX01 2.0 13.5##a span that ends after the video (14 s) is fine",
                "SHORT 3.0 15.0##ends past the truncated file's end: clamped",
                "SHORT 12.0 15.0##starts past the truncated file's end: dropped",
                "TRUNC 1.0 3.0##the truncated file cannot be read",
                f"{MISSING} 1.0 3.0##this video is not in the folder",
                "AX01 1.0 3.0 no separator",
                "BX02 one 3.0##times that are not numbers",
                "CX03 5.0 2.0##end before start",
            ]
        files[split] = root / f"charades_{split}.txt"
        files[split].write_text("\n".join(lines) + "\n")
    return files


def write_fig(root: Path) -> dict[str, Path]:
    files, desc = {}, 100
    for split, ids in (("train", TRAIN), ("test", TEST)):
        lines = []
        for v, s, e, text in _queries(ids):
            lines.append(json.dumps({"video": v, "time": [s, e], "duration": VIDEOS[v][5],
                                     "fig_desc": text, "cog_desc": "", "desc_id": desc}))
            desc += 1
        if split == "train":
            lines += [
                json.dumps({"video": "SHORT", "time": [3.0, 15.0], "duration": 20,
                            "fig_desc": "clamped", "desc_id": 900}),
                json.dumps({"video": "SHORT", "time": [12.0, 15.0], "duration": 20,
                            "fig_desc": "dropped", "desc_id": 901}),
                json.dumps({"video": "TRUNC", "time": [1.0, 3.0], "duration": 8,
                            "fig_desc": "undecodable", "desc_id": 902}),
                json.dumps({"video": MISSING, "time": [1.0, 3.0], "duration": 8,
                            "fig_desc": "missing", "desc_id": 903}),
                '{"video": "AX01", "time": [1.0, 3.0], "duration": 14, "fig_desc": "tr',
                json.dumps({"video": "AX01", "time": [1.0], "duration": 14, "fig_desc": "x"}),
                json.dumps({"video": "AX01", "time": [1.0, 3.0], "duration": 14}),
            ]
        files[split] = root / f"fig_{split}.jsonl"
        files[split].write_text("\n".join(lines) + "\n")
    return files


def write_didemo(root: Path) -> dict[str, Path]:
    """DiDeMo ids carry an extension; here `.mov` for files that are .mp4 and friends."""
    files, ann = {}, 0
    for split, ids in (("train", TRAIN), ("test", TEST)):
        rows = []
        for v in ids:
            for times in ([[0, 0], [0, 0], [0, 1]], [[1, 1], [1, 1]]):
                rows.append({"video": f"{v}.mov", "description": f"the shape of {v}",
                             "times": times, "annotation_id": ann, "num_segments": 3})
                ann += 1
        if split == "train":
            rows += [
                {"video": "SHORT.mov", "description": "chunk 1 ends at 10 s, past 9.x s",
                 "times": [[1, 1]], "annotation_id": 900, "num_segments": 4},
                {"video": "SHORT.mov", "description": "chunk 2 starts past the end",
                 "times": [[2, 2]], "annotation_id": 901, "num_segments": 4},
                {"video": f"{MISSING}.mov", "description": "missing", "times": [[0, 0]],
                 "annotation_id": 902},
                {"video": "TRUNC.mov", "description": "undecodable", "times": [[0, 0]],
                 "annotation_id": 905},
                {"video": "AX01.mov", "description": "", "times": [[0, 0]], "annotation_id": 903},
                {"video": "AX01.mov", "description": "bad chunk", "times": [[0, 9]],
                 "annotation_id": 904},
                "not an object",
            ]
        files[split] = root / f"didemo_{split}.json"
        files[split].write_text(json.dumps(rows))
    return files


def write_activitynet(root: Path) -> dict[str, Path]:
    files = {}
    for split, ids in (("train", TRAIN), ("test", TEST)):
        data = {v: {"duration": float(VIDEOS[v][5]), "timestamps": [[1.0, 4.0], [5.0, 8.0]],
                    "sentences": [f"the shape of {v} moves right", f"the shape of {v} keeps moving"]}
                for v in ids}
        if split == "train":
            data["SHORT"]["timestamps"] += [[3.0, 15.0], [12.0, 15.0]]
            data["SHORT"]["sentences"] += ["clamped", "dropped"]
            data["AX01"]["timestamps"].append([3.0])
            data["AX01"]["sentences"].append("a one-number timestamp")
            data["TRUNC"] = {"duration": 8.0, "timestamps": [[1.0, 3.0]], "sentences": ["x"]}
            data[MISSING] = {"duration": 8.0, "timestamps": [[1.0, 3.0]], "sentences": ["x"]}
            data["ZZ99"] = {"duration": 8.0, "timestamps": [[1.0, 3.0]], "sentences": []}
        files[split] = root / f"activitynet_{split}.json"
        files[split].write_text(json.dumps(data))
    return files


WRITERS = {"charades": write_charades, "fig": write_fig, "didemo": write_didemo,
           "activitynet": write_activitynet}
# What a build must make of each format's files: every format has 2 good queries for each of
# the 6 train and 3 test videos, a span clamped and one dropped on SHORT, TRUNC undecodable
# and MISSING missing; the rest is per format (comments).
EXPECTED = {
    "charades": {"left_out": 3, "train": 12 + 1 + 1, "test": 6, "clamped": 1, "dropped": 1},
    "fig": {"left_out": 3, "train": 12 + 1, "test": 6, "clamped": 1, "dropped": 1},
    # chunk [5, 10] of the 9 s EX05 and of the 9.1 s readable SHORT are clamped too
    "didemo": {"left_out": 3, "train": 12 + 1, "test": 6, "clamped": 3, "dropped": 1},
    "activitynet": {"left_out": 2, "train": 12 + 1, "test": 6, "clamped": 1, "dropped": 1},
}
