"""A deterministic synthetic corpus a tiny vision-language model can actually learn.

Every word of a query is decidable from the pixels: a dark plain background, and 2-3 big,
saturated objects (colour + shape) that each appear, move in one direction and vanish on
whole seconds. Events never overlap in time, and colours are distinct within a video, so
each query has one exact span and one colour marks it.

A query names the background too ("a red circle moves left on a navy background"): that
multiplies the vocabulary enough for each description to occur in only one video of the
corpus, so the ground-truth video is the only correct answer. Only such unique events are
queried. Near-duplicate copies differ from their original in one event, and the shared
events are by construction not unique, so a pair's queries are about the changed event
and each video of the pair is a true hard negative for the other's query.

With `capital_colours` queries write the colour capitalised ("a Red circle moves left on a
navy background"); the annotations the policy learns to caption stay lower-case. The tiny
embedder is pretrained on lower-case captions, so it reads a capitalised colour as byte pieces
it never learned and ranks mostly by shape, motion and background: the synthetic form of the
FIG datasets' premise, fine-grained details the search engine underweights and the policy
reads. A wrong top-1 then tells what to refine (docs/experiments.md, "SQR: the FIG premise
built into the corpus").
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from config.schema import SynthConfig
from corpus.schema import queries_table, videos_table, write_parquet

BACKGROUNDS = {
    "black": (8, 8, 8), "gray": (64, 64, 64), "maroon": (90, 12, 12), "dark green": (12, 70, 12),
    "navy": (12, 12, 96), "purple": (64, 12, 80), "brown": (84, 52, 20), "teal": (12, 64, 64),
}
COLOURS = {
    "red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 80, 255), "yellow": (240, 230, 30),
    "white": (245, 245, 245), "magenta": (230, 40, 230), "cyan": (30, 220, 230),
}
SHAPES = ("square", "circle", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy)
MIN_SPAN, MAX_SPAN = 2, 6  # seconds
VERSION = 3  # bump when the rendering changes, so old corpora regenerate


def describe(colour: str, shape: str, motion: str, background: str, capital_colour: bool = False) -> str:
    """The caption the tiny models are pretrained on; with `capital_colour` the query form of
    the run's corpus ("a Red circle moves ...", `SynthConfig.capital_colours`)."""
    written = colour.capitalize() if capital_colour else colour
    return f"a {written} {shape} moves {motion} on a {background} background"


@dataclass
class Event:
    colour: str
    shape: str
    motion: str
    start_s: int
    end_s: int
    offset: float  # position across the motion axis, as a fraction of the frame


@dataclass
class Video:
    video_id: str
    background: str
    events: list[Event]
    near_duplicate_of: str | None = None

    def describe(self, e: Event, capital_colour: bool = False) -> str:
        return describe(e.colour, e.shape, e.motion, self.background, capital_colour)


@dataclass
class SynthCorpus:
    out_dir: Path
    videos_path: Path
    queries_path: Path
    manifest_path: Path
    num_videos: int
    num_queries: int
    near_duplicate_of: dict[str, str] = field(default_factory=dict)  # copy id -> original id


def _manifest(cfg: SynthConfig) -> dict:
    return {"version": VERSION, "config": asdict(cfg)}


def generate_corpus(cfg: SynthConfig, out_dir: Path, progress: bool = False) -> SynthCorpus:
    """Writes videos/, videos.parquet, queries.parquet, then manifest.json as the completion mark.

    Video paths in the table are relative to out_dir, so a corpus can be moved and two
    generations of one config are equal wherever they live. The manifest also holds what
    the tables cannot: `near_duplicate_of` (copy id -> original id) and every video's
    scene. queries_per_video is an upper bound: a near-duplicate pair member has only its
    changed event to ask about.
    """
    if cfg.size < 16 or cfg.size % 2 or cfg.seconds < MIN_SPAN or cfg.fps < 1:
        raise ValueError(f"synth needs an even size >= 16, seconds >= {MIN_SPAN} and fps >= 1, got {cfg}")
    if min(cfg.val_fraction, cfg.test_fraction) < 0 or cfg.val_fraction + cfg.test_fraction >= 1:
        raise ValueError("corpus.synth.val_fraction and test_fraction must be >= 0 and leave videos "
                         f"to train on, got {cfg.val_fraction} and {cfg.test_fraction}")
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in ("version", "config")} == _manifest(cfg) and _complete(out_dir, manifest):
            return _corpus(out_dir, manifest)
        manifest_path.unlink()
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "videos").glob("synth_*.mp4"):
        stale.unlink()

    videos = _plan(cfg, np.random.default_rng(cfg.seed))
    rng = np.random.default_rng([cfg.seed, 1])  # separate stream: splits don't shift the scenes
    splits = _splits(videos, rng, {"test": cfg.test_fraction, "val": cfg.val_fraction})
    counts = Counter(v.describe(e) for v in videos for e in v.events)
    video_rows, query_rows = [], []
    for v in tqdm(videos, desc="synth videos", disable=not progress):
        rel = f"videos/{v.video_id}.mp4"
        _encode(_render(v, cfg), cfg.fps, out_dir / rel)
        video_rows.append(dict(video_id=v.video_id, path=rel, duration_s=float(cfg.seconds),
                               fps=float(cfg.fps), num_frames=cfg.seconds * cfg.fps))
        unique = [e for e in v.events if counts[v.describe(e)] == 1]
        picked = sorted(rng.permutation(len(unique))[: cfg.queries_per_video])
        for j, k in enumerate(picked):
            e = unique[k]
            query_rows.append(dict(query_id=f"{v.video_id}:q{j}", video_id=v.video_id,
                                   text=v.describe(e, cfg.capital_colours),
                                   start_s=float(e.start_s), end_s=float(e.end_s),
                                   duration_s=float(cfg.seconds), split=splits[v.video_id], source="synth"))
    write_parquet(videos_table(video_rows), out_dir / "videos.parquet")
    write_parquet(queries_table(query_rows), out_dir / "queries.parquet")
    manifest = _manifest(cfg) | {
        "num_queries": len(query_rows),
        "near_duplicate_of": {v.video_id: v.near_duplicate_of for v in videos if v.near_duplicate_of},
        "videos": {v.video_id: {"background": v.background, "events": [asdict(e) for e in v.events],
                                "split": splits[v.video_id]} for v in videos},
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)  # atomic: a manifest on disk always means a finished corpus
    return _corpus(out_dir, manifest)


def scenes_of(corpus: SynthCorpus) -> dict[str, Video]:
    """video id -> its scene, read back from the manifest."""
    manifest = json.loads(corpus.manifest_path.read_text())
    copies = manifest["near_duplicate_of"]
    return {vid: Video(vid, s["background"], [Event(**e) for e in s["events"]], copies.get(vid))
            for vid, s in manifest["videos"].items()}


def moments_of(corpus: SynthCorpus) -> list[dict]:
    """Every event of every video as an annotated moment (video_id, text, start_s, end_s,
    split), also the events no query asks about because their description repeats."""
    splits = splits_of(corpus)
    return [dict(video_id=vid, text=v.describe(e), start_s=float(e.start_s), end_s=float(e.end_s),
                 split=splits[vid])
            for vid, v in scenes_of(corpus).items() for e in v.events]


def splits_of(corpus: SynthCorpus) -> dict[str, str]:
    """video id -> train | val | test, also for videos no query is asked about."""
    return {vid: s["split"] for vid, s in json.loads(corpus.manifest_path.read_text())["videos"].items()}


def _complete(out_dir: Path, manifest: dict) -> bool:
    names = ["videos.parquet", "queries.parquet", *(f"videos/{v}.mp4" for v in manifest["videos"])]
    return all((out_dir / n).is_file() for n in names)


def _corpus(out_dir: Path, manifest: dict) -> SynthCorpus:
    return SynthCorpus(out_dir, out_dir / "videos.parquet", out_dir / "queries.parquet",
                       out_dir / "manifest.json", len(manifest["videos"]), manifest["num_queries"],
                       manifest["near_duplicate_of"])


def _plan(cfg: SynthConfig, rng: np.random.Generator) -> list[Video]:
    """Scenes for all videos; descriptions already used in the corpus are avoided while any is left."""
    n = cfg.num_videos
    n_dup = min(round(n * cfg.near_duplicate_fraction), n // 2)
    order = rng.permutation(n)
    original_of = {int(c): int(o) for c, o in zip(order[:n_dup], order[n_dup: 2 * n_dup], strict=True)}
    used: set[tuple] = set()
    videos: dict[int, Video] = {}
    for i in (i for i in range(n) if i not in original_of):
        bg = str(rng.choice(list(BACKGROUNDS)))
        videos[i] = Video(f"synth_{i:04d}", bg, _events(cfg.seconds, bg, used, rng))
    for c, o in sorted(original_of.items()):
        videos[c] = _near_duplicate(videos[o], f"synth_{c:04d}", used, rng)
    return [videos[i] for i in range(n)]


def _events(seconds: int, bg: str, used: set[tuple], rng: np.random.Generator) -> list[Event]:
    k = min(int(rng.integers(2, 4)), seconds // MIN_SPAN)
    spans = rng.integers(MIN_SPAN, MAX_SPAN + 1, size=k)
    while spans.sum() > seconds:
        spans[spans.argmax()] -= 1
    gaps = rng.multinomial(seconds - spans.sum(), np.full(k + 1, 1 / (k + 1)))
    events, t = [], 0
    for span, gap in zip(spans, gaps[:k], strict=True):
        t += int(gap)
        taken = {e.colour for e in events}  # colours stay distinct within a video
        options = [(c, s, m) for c in COLOURS if c not in taken for s in SHAPES for m in MOTIONS]
        fresh = [o for o in options if (bg, *o) not in used] or options
        c, s, m = fresh[int(rng.integers(len(fresh)))]
        used.add((bg, c, s, m))
        events.append(Event(c, s, m, t, t + int(span), float(rng.uniform(0.3, 0.7))))
        t += int(span)
    return events


def _near_duplicate(orig: Video, video_id: str, used: set[tuple], rng: np.random.Generator) -> Video:
    """Same background, timing and paths; one event gets another colour or another shape."""
    j = int(rng.integers(len(orig.events)))
    e = orig.events[j]
    taken = {x.colour for x in orig.events}
    options = [(c, e.shape) for c in COLOURS if c not in taken] + [(e.colour, s) for s in SHAPES if s != e.shape]
    fresh = [o for o in options if (orig.background, *o, e.motion) not in used] or options
    colour, shape = fresh[int(rng.integers(len(fresh)))]
    used.add((orig.background, colour, shape, e.motion))
    events = list(orig.events)
    events[j] = Event(colour, shape, e.motion, e.start_s, e.end_s, e.offset)
    return Video(video_id, orig.background, events, near_duplicate_of=orig.video_id)


def _splits(videos: list[Video], rng: np.random.Generator, fractions: dict[str, float]) -> dict[str, str]:
    """Held-out splits by share of the videos, the rest train; a near-duplicate pair is one
    unit so it never straddles splits."""
    groups: dict[str, list[str]] = {}
    for v in videos:
        groups.setdefault(v.near_duplicate_of or v.video_id, []).append(v.video_id)
    n = len(videos)
    quota = {s: max(1, round(f * n)) for s, f in fractions.items()} if n >= 3 else {}
    filled = dict.fromkeys(quota, 0)
    out = {}
    for g in rng.permutation(sorted(groups)):
        members = groups[str(g)]
        name = next((s for s, q in quota.items() if filled[s] == 0 or filled[s] + len(members) <= q), "train")
        if name != "train":
            filled[name] += len(members)
        out.update(dict.fromkeys(members, name))
    return out


def _masks(side: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:side, :side] + 0.5
    r = side / 2
    return {
        "square": np.ones((side, side), bool),
        "circle": (yy - r) ** 2 + (xx - r) ** 2 <= r * r,
        "triangle": np.abs(xx - r) <= yy / 2,  # apex up, base along the bottom row
    }


def _render(v: Video, cfg: SynthConfig) -> np.ndarray:
    """Frame i shows time i/fps; an event is drawn iff start_s <= i/fps < end_s."""
    size, n = cfg.size, cfg.seconds * cfg.fps
    side = max(4, round(size / 2))
    masks = _masks(side)
    frames = np.full((n, size, size, 3), BACKGROUNDS[v.background], np.uint8)
    lo, hi = side / 2, size - side / 2  # centre range that keeps the object inside the frame
    for e in v.events:
        dx, dy = MOTIONS[e.motion]
        for i in range(e.start_s * cfg.fps, e.end_s * cfg.fps):
            p = (i / cfg.fps - e.start_s) / (e.end_s - e.start_s)  # progress in [0, 1)
            along = lo + (hi - lo) * (p if dx + dy > 0 else 1 - p)
            across = lo + (hi - lo) * e.offset
            cx, cy = (along, across) if dx else (across, along)
            y0, x0 = round(cy - side / 2), round(cx - side / 2)
            frames[i, y0: y0 + side, x0: x0 + side][masks[e.shape]] = COLOURS[e.colour]
    return frames


def _encode(frames: np.ndarray, fps: int, path: Path) -> None:
    """Lossless H.264 (qp=0): lossy x264 output was seen to vary between runs even on one
    thread, and lossless coding makes the decoded frames exactly the rendered ones (up to
    yuv420p), whatever the encoder decides. Flat synthetic frames stay ~6 KB a video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.thread_count = 1  # 64x64 frames gain nothing from threads
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
