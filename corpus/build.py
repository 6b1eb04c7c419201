"""`corpus build`: a folder of videos plus public annotation files -> a corpus directory
(videos.parquet + queries.parquet) the job reads through `corpus.video_dir`.

Every video an annotation names is found by id, probed once (duration, fps, frame count,
whether the job's decoder reads it) in a Ray Data pipeline, and checked against its queries.
Nothing is dropped silently: the report names every missing video, every undecodable file,
every annotation row left out and every span clamped or dropped, with the reason. Probes are
appended to `probes.jsonl` as they finish, so a killed or repeated build probes only what it
has not probed yet (a file is re-probed when its size or modification time changes).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from config.schema import VideoConfig
from corpus.readers import AnnotationError, Problem, read_annotations
from corpus.schema import queries_table, videos_table, write_parquet

CONTAINERS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
SPLITS = ("train", "val", "test")
# The probe decodes frames at 1 fps over the whole video (up to 64, spread to the end, so a
# truncated tail is found) at a thumbnail's size: what the job's decoder does, cheaply.
PROBE_VIDEO = VideoConfig(fps=1.0, max_frames=64, max_pixels=32 * 32, min_pixels=32 * 32)
PROBES = "probes.jsonl"
REPORT = "build_report.json"
_EPS = 1e-6


class BuildError(ValueError):
    """The build cannot go on: an unusable input, or in strict mode its first problem."""


@dataclass
class Probe:
    path: str
    size: int
    mtime_ns: int
    duration_s: float = 0.0
    fps: float = 0.0
    num_frames: int = 0
    decoder: str = ""
    error: str = ""  # why the file cannot be used; empty when it decodes


@dataclass
class BuildReport:
    out_dir: str
    format: str
    annotations: dict[str, str]  # split -> file
    probed: int = 0  # files probed by this run
    reused: int = 0  # probes reused from an earlier run
    seconds: float = 0.0
    rows_left_out: list[str] = field(default_factory=list)  # "file:line: reason"
    missing_videos: dict[str, int] = field(default_factory=dict)  # video id -> queries lost
    undecodable: dict[str, str] = field(default_factory=dict)  # video id -> "path: reason"
    clamped: list[str] = field(default_factory=list)  # "query_id: end E -> duration D"
    dropped: list[str] = field(default_factory=list)  # "query_id: reason"
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> videos, queries
    decoders: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        total = sum(c["queries"] for c in self.counts.values())
        lines = [f"{self.format} corpus -> {self.out_dir}: {total} queries; probed "
                 f"{self.probed} files ({self.reused} probed earlier) in {self.seconds:.1f} s"]
        lines += [f"  {split}: {c['videos']} videos, {c['queries']} queries"
                  for split, c in self.counts.items()]
        if set(self.decoders) - {"decord"}:
            lines.append("  decoded by " + ", ".join(f"{k}: {v}" for k, v in sorted(self.decoders.items())))
        sections = [
            ("annotation rows left out", self.rows_left_out),
            ("missing videos (not in the video folder)",
             [f"{v} ({n} queries)" for v, n in self.missing_videos.items()]),
            ("undecodable videos", [f"{v}: {why}" for v, why in self.undecodable.items()]),
            ("spans clamped to the probed duration", self.clamped),
            ("queries dropped", self.dropped),
        ]
        for title, items in sections:
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {item}" for item in items]
        return "\n".join(lines)


class _Problems:
    """Collects a build's problems; in strict mode the first one is the error."""

    def __init__(self, strict: bool):
        self.strict = strict

    def __call__(self, why: str, bucket: list | dict, key: str, value=None) -> None:
        """Record `key` (with `value` in a dict bucket); `why` is the strict mode's error."""
        if self.strict:
            raise BuildError(f"{why} (--strict stops at the first problem)")
        if isinstance(bucket, dict):
            bucket[key] = value
        else:
            bucket.append(key)


def find_videos(video_dir: Path) -> dict[str, Path]:
    """Every video file under video_dir by file name and by stem; on a stem shared by two
    containers, the one earlier in CONTAINERS wins (deterministic)."""
    if not video_dir.is_dir():
        raise BuildError(f"{video_dir}: no such video folder")
    files = sorted((p for p in video_dir.rglob("*") if p.suffix.lower() in CONTAINERS
                    and p.is_file()), key=lambda p: (CONTAINERS.index(p.suffix.lower()), str(p)))
    found: dict[str, Path] = {}
    for p in files:
        found.setdefault(p.name, p)
        found.setdefault(p.stem, p)
    return found


def locate(video_id: str, found: dict[str, Path]) -> Path | None:
    """A video id as a file name (DiDeMo ids carry their extension), else as a stem; a
    DiDeMo id whose file was converted to another container is found by its stem."""
    if video_id in found:
        return found[video_id]
    stem, ext = os.path.splitext(video_id)
    return found.get(stem) if ext.lower() in CONTAINERS else None


def probe_file(row: dict) -> dict:
    """Ray Data map: {path, size, mtime_ns} -> a Probe as a dict."""
    from corpus.video import VideoDecodeError, decode_video

    probe = Probe(row["path"], row["size"], row["mtime_ns"])
    try:
        video = decode_video(row["path"], PROBE_VIDEO, cache=False)
    except VideoDecodeError as e:
        probe.error = f"{type(e).__name__}: {e}"
    else:
        probe.duration_s, probe.fps = video.duration_s, video.source_fps
        probe.num_frames, probe.decoder = round(video.duration_s * video.source_fps), video.decoder
    return asdict(probe)


def _identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_probes(cache: Path) -> dict[str, Probe]:
    """Earlier probes by path; a torn last line (a killed build) is ignored."""
    probes = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            try:
                p = Probe(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            probes[p.path] = p
    return probes


def probe_videos(paths: list[Path], cache: Path, progress: bool = True) -> tuple[dict[str, Probe], int]:
    """(probe per path, how many this call probed): files already probed with the same size
    and modification time are reused; the rest are probed in parallel by Ray Data, each
    appended to `cache` as it arrives."""
    import ray
    from tqdm import tqdm

    earlier = _read_probes(cache)
    probes, todo = {}, []
    for path in paths:
        ident = _identity(path)
        old = earlier.get(str(path))
        if old and (old.size, old.mtime_ns) == (ident["size"], ident["mtime_ns"]):
            probes[str(path)] = old
        else:
            todo.append(ident)
    if not todo:
        return probes, 0
    if not ray.is_initialized():
        ray.init(address="auto" if os.environ.get("RAY_ADDRESS") else None, log_to_driver=False)
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 64)).map(probe_file, num_cpus=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a") as out, tqdm(total=len(todo), desc="probe videos", unit="video",
                                      disable=not progress) as bar:
        for row in ds.iter_rows():
            probe = Probe(**{k: row[k] for k in Probe.__dataclass_fields__})
            out.write(json.dumps(asdict(probe)) + "\n")
            out.flush()
            probes[probe.path] = probe
            bar.update(1)
    return probes, len(todo)


def _read_splits(fmt: str, annotations: dict[str, str], strict: bool, report: BuildReport,
                 problem: _Problems) -> list[dict]:
    rows, seen = [], {}
    for split, path in annotations.items():
        if split not in SPLITS:
            raise BuildError(f"unknown split {split!r} for {path} (splits: {', '.join(SPLITS)})")
        try:
            result = read_annotations(fmt, path, split, strict=strict)
        except (AnnotationError, FileNotFoundError) as e:
            raise BuildError(str(e)) from None
        for p in result.report.problems:
            report.rows_left_out.append(str(p))
        for row in result.table.to_pylist():
            if row["query_id"] in seen:  # the same annotation in two splits' files
                left_out = str(Problem(str(path), row["query_id"],
                                       f"duplicate query_id, already in split {seen[row['query_id']]}"))
                problem(left_out, report.rows_left_out, left_out)
                continue
            seen[row["query_id"]] = split
            rows.append(row)
    return rows


def _check_spans(rows: list[dict], durations: dict[str, float], report: BuildReport,
                 problem: _Problems) -> list[dict]:
    """Spans against the probed durations: ending past the end -> clamped; starting at or
    past it -> dropped. duration_s becomes the probed one."""
    kept = []
    for row in rows:
        duration = durations[row["video_id"]]
        if row["start_s"] >= duration - _EPS:
            why = (f"{row['query_id']}: span [{row['start_s']:g}, {row['end_s']:g}] starts at or "
                   f"after the end of {row['video_id']} ({duration:g} s as probed)")
            problem(why, report.dropped, why)
            continue
        if row["end_s"] > duration + _EPS:
            problem(f"{row['query_id']}: span ends at {row['end_s']:g} s, after the end of "
                    f"{row['video_id']} ({duration:g} s as probed)", report.clamped,
                    f"{row['query_id']}: end {row['end_s']:g} -> {duration:g}")
            row = row | {"end_s": duration}
        kept.append(row | {"duration_s": duration})
    return kept


def build_corpus(fmt: str, annotations: dict[str, str], video_dir: str | Path,
                 out_dir: str | Path, strict: bool = False, progress: bool = True) -> BuildReport:
    """Build the corpus directory and write its report (also as `build_report.json`)."""
    started = time.time()
    video_dir, out_dir = Path(video_dir).resolve(), Path(out_dir).resolve()
    if not annotations:
        raise BuildError("no annotation file given (--annotations SPLIT=PATH)")
    report = BuildReport(str(out_dir), fmt, {k: str(v) for k, v in annotations.items()})
    problem = _Problems(strict)
    rows = _read_splits(fmt, annotations, strict, report, problem)

    found = find_videos(video_dir)
    needed = sorted({r["video_id"] for r in rows})
    paths = {}
    for vid in needed:
        path = locate(vid, found)
        if path is None:
            lost = sum(r["video_id"] == vid for r in rows)
            problem(f"video {vid!r} ({lost} queries) not found in {video_dir}",
                    report.missing_videos, vid, lost)
        else:
            paths[vid] = path
    probes, report.probed = probe_videos(sorted(set(paths.values())), out_dir / PROBES, progress)
    report.reused = len(probes) - report.probed

    videos = []
    for vid, path in paths.items():
        probe = probes[str(path)]
        if probe.error:
            problem(f"video {vid!r} cannot be decoded: {probe.error}", report.undecodable, vid,
                    probe.error)
            continue
        report.decoders[probe.decoder] = report.decoders.get(probe.decoder, 0) + 1
        videos.append({"video_id": vid, "path": str(path), "duration_s": probe.duration_s,
                       "fps": probe.fps, "num_frames": probe.num_frames})
    durations = {v["video_id"]: v["duration_s"] for v in videos}
    usable = [r for r in rows if r["video_id"] in durations]
    queries = _check_spans(usable, durations, report, problem)
    if not queries:
        raise BuildError(f"no usable query left of {len(rows)} read; see the problems above:\n"
                         + report.summary())

    for split in annotations:
        mine = [q for q in queries if q["split"] == split]
        report.counts[split] = {"videos": len({q["video_id"] for q in mine}), "queries": len(mine)}
    report.seconds = time.time() - started
    _write(out_dir, videos_table(videos), queries_table(queries), report)
    return report


def _write(out_dir: Path, videos: pa.Table, queries: pa.Table, report: BuildReport) -> None:
    """Tables first, the report last: a report on disk means a complete corpus."""
    write_parquet(videos, out_dir / "videos.parquet")
    write_parquet(queries, out_dir / "queries.parquet")
    tmp = out_dir / f".{REPORT}.tmp"
    tmp.write_text(json.dumps(asdict(report), indent=1))
    tmp.rename(out_dir / REPORT)
