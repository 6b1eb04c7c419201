"""Readers for the public moment-retrieval annotation formats, all producing QUERY_SCHEMA.

Public annotation dumps contain broken rows (empty sentences, spans past the video end,
mismatched lists). A bad row is skipped but always recorded in the report, so a shrinking
corpus is visible; `strict=True` turns the first problem into an error for curated data.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from corpus.schema import QUERY_SCHEMA, queries_table

DIDEMO_CHUNK_S = 5.0
DIDEMO_MAX_CHUNK = 5
DIDEMO_DEFAULT_DURATION_S = 30.0
_EPS = 1e-6


class AnnotationError(ValueError):
    """An annotation file (or, in strict mode, one of its rows) cannot be used."""


@dataclass(frozen=True)
class Problem:
    file: str
    line_or_row: int | str  # 1-based line (line formats), 0-based row or key (JSON)
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line_or_row}: {self.reason}"


@dataclass
class ReadReport:
    file: str
    read: int = 0  # queries that made it into the table
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """One per problem: each problem rejects exactly one record (or ActivityNet sentence)."""
        return len(self.problems)

    def summary(self) -> str:
        head = f"{self.file}: read {self.read}, skipped {self.skipped}"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass
class ReadResult:
    table: pa.Table
    report: ReadReport


class _Skip(Exception):
    """Raised while parsing a record; the caller turns it into a Problem."""


class _Collector:
    """Validates candidate queries and accumulates rows and problems for one file."""

    def __init__(self, path: Path, source: str, split: str, strict: bool):
        self.source, self.split, self.strict = source, split, strict
        self.report = ReadReport(str(path))
        self.rows: list[dict] = []
        self.seen: set[str] = set()

    def problem(self, where: int | str, reason: str) -> None:
        p = Problem(self.report.file, where, reason)
        if self.strict:
            raise AnnotationError(str(p))
        self.report.problems.append(p)

    def add(self, query_id, video_id, text, start, end, duration) -> None:
        """`duration=None` means unknown: duration_s falls back to end_s, unchecked."""
        known = duration is not None
        duration = duration if known else end
        text = _check_span(text, start, end, duration, check_beyond=known)
        if query_id in self.seen:
            raise _Skip(f"duplicate query_id {query_id!r}")
        self.seen.add(query_id)
        times = (float(start), float(end), float(duration))
        values = (query_id, video_id, text, *times, self.split, self.source)
        self.rows.append(dict(zip(QUERY_SCHEMA.names, values, strict=True)))

    def result(self) -> ReadResult:
        self.report.read = len(self.rows)
        return ReadResult(queries_table(self.rows), self.report)


def _check_span(text, start, end, duration, check_beyond: bool) -> str:
    if not isinstance(text, str):
        raise _Skip(f"wrong type: text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _Skip("empty text")
    if not all(math.isfinite(t) for t in (start, end, duration)):
        raise _Skip(f"non-finite time (start {start}, end {end}, duration {duration})")
    if start < 0 or end < 0:
        raise _Skip(f"negative time (start {start}, end {end})")
    if duration <= 0:
        raise _Skip(f"non-positive duration {duration}")
    if end <= start:
        raise _Skip(f"empty span (end {end} <= start {start})")
    if check_beyond and end > duration + _EPS:
        raise _Skip(f"span beyond duration (end {end} > duration {duration})")
    return text.strip()


def _get(obj: dict, key: str, kind: str):
    """Fetch a required field of a JSON object, checking its JSON type."""
    if key not in obj:
        raise _Skip(f"missing field {key!r}")
    value = obj[key]
    ok = {
        "string": isinstance(value, str),
        "number": _is_num(value),
        "list": isinstance(value, list),
        "id": isinstance(value, str) or _is_int(value),
    }[kind]
    if not ok:
        raise _Skip(f"wrong type: {key!r} must be a {kind}, got {type(value).__name__}")
    return value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true/false are not numbers


def _is_num(v) -> bool:
    return _is_int(v) or isinstance(v, float)


def _pair(value, what: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(map(_is_num, value))):
        raise _Skip(f"wrong type: {what} must be a [start, end] pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Skip(f"wrong type: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _read_bytes(path: Path) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark (editors on Windows write one, and it
    would end up in the first video id); a path that is not a readable file is an error."""
    if path.is_dir():
        raise AnnotationError(f"{path} is a directory, not an annotation file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such annotation file") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    return data.removeprefix(b"\xef\xbb\xbf")


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """Non-blank lines with 1-based numbers; None for a line that is not UTF-8."""
    for no, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield no, None
            continue
        if line.strip():
            yield no, line


def _load_json(path: Path):
    try:
        return json.loads(_read_bytes(path))
    except json.JSONDecodeError as e:
        msg = f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        raise AnnotationError(msg) from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e


def read_charades(path, split: str, strict: bool = False, durations=None) -> ReadResult:
    """Charades-STA lines `VIDEOID start end##sentence`.

    The file has no durations, hence the optional `durations` map (video_id -> seconds);
    without one for a video, duration_s is end_s and the beyond-duration check is impossible.
    """
    path, durations = Path(path), durations or {}
    out = _Collector(path, "charades", split, strict)
    for no, line in _lines(path):
        try:
            if line is None:
                raise _Skip("not valid UTF-8")
            head, sep, text = line.partition("##")
            fields = head.split()
            if not sep or len(fields) != 3:
                raise _Skip("expected 'VIDEOID start end##sentence'")
            video_id, *times = fields
            try:
                start, end = map(float, times)
            except ValueError:
                raise _Skip(f"wrong type: times {times} must be numbers") from None
            out.add(
                f"charades:{video_id}:{no}", video_id, text, start, end, durations.get(video_id)
            )
        except _Skip as e:
            out.problem(no, str(e))
    return out.result()


def read_fig(path, split: str, strict: bool = False) -> ReadResult:
    """FIG JSONL: `video`, `time` [start, end], `duration`, `fig_desc` (the query), `desc_id`.

    `cog_desc` is not needed for retrieval and so not required.
    """
    path = Path(path)
    out = _Collector(path, "fig", split, strict)
    for no, line in _lines(path):
        try:
            if line is None:
                raise _Skip("not valid UTF-8")
            try:
                obj = _object(json.loads(line), "line")
            except json.JSONDecodeError as e:
                raise _Skip(f"bad JSON at column {e.colno}: {e.msg}") from None
            video = _get(obj, "video", "string")
            start, end = _pair(_get(obj, "time", "list"), "'time'")
            duration = _get(obj, "duration", "number")
            text = _get(obj, "fig_desc", "string")
            qid = f"fig:{_get(obj, 'desc_id', 'id')}" if "desc_id" in obj else f"fig:{video}:{no}"
            out.add(qid, video, text, start, end, duration)
        except _Skip as e:
            out.problem(no, str(e))
    return out.result()


def _didemo_span(times: list) -> tuple[float, float]:
    """Consensus of the annotators: the most common chunk pair, the first one on a tie."""
    if not times:
        raise _Skip("empty 'times'")
    pairs = []
    for pair in times:
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(_is_int, pair))):
            raise _Skip(
                f"wrong type: 'times' entries must be [start, end] chunk indices, got {pair!r}"
            )
        s, e = pair
        if not 0 <= s <= e <= DIDEMO_MAX_CHUNK:
            raise _Skip(f"bad chunk pair {pair!r} (need 0 <= start <= end <= {DIDEMO_MAX_CHUNK})")
        pairs.append((s, e))
    s, e = Counter(pairs).most_common(1)[0][0]
    return s * DIDEMO_CHUNK_S, (e + 1) * DIDEMO_CHUNK_S


def read_didemo(path, split: str, strict: bool = False) -> ReadResult:
    """DiDeMo JSON list; spans are 5 s chunks, clamped to a shorter video's duration."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list, got {type(data).__name__}")
    out = _Collector(path, "didemo", split, strict)
    for row, item in enumerate(data):
        try:
            obj = _object(item, "annotation")
            video = _get(obj, "video", "string")
            text = _get(obj, "description", "string")
            ann_id = _get(obj, "annotation_id", "id")
            duration = DIDEMO_DEFAULT_DURATION_S
            if "duration" in obj:
                duration = _get(obj, "duration", "number")
            elif "num_segments" in obj:  # the release's own length field, in 5 s chunks
                segments = _get(obj, "num_segments", "number")
                if not 0 < segments < math.inf:
                    raise _Skip(f"bad num_segments {segments} (must be positive)")
                duration = segments * DIDEMO_CHUNK_S
            start, end = _didemo_span(_get(obj, "times", "list"))
            if math.isfinite(duration) and start >= duration:
                raise _Skip(f"span beyond duration (start {start} >= duration {duration})")
            out.add(f"didemo:{ann_id}", video, text, start, min(end, duration), duration)
        except _Skip as e:
            out.problem(row, str(e))
    return out.result()


def read_activitynet(path, split: str, strict: bool = False) -> ReadResult:
    """ActivityNet Captions JSON `{video_id: {duration, timestamps, sentences}}`.

    A length mismatch makes the pairing of spans and sentences unknowable, so the whole
    video is skipped; any other problem skips just that sentence.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object, got {type(data).__name__}")
    out = _Collector(path, "activitynet", split, strict)
    for video_id, item in data.items():
        try:
            obj = _object(item, "video entry")
            duration = _get(obj, "duration", "number")
            if not 0 < duration < math.inf:
                raise _Skip(f"bad duration {duration} (must be positive and finite)")
            stamps = _get(obj, "timestamps", "list")
            sentences = _get(obj, "sentences", "list")
            if len(stamps) != len(sentences):
                raise _Skip(f"{len(stamps)} timestamps but {len(sentences)} sentences")
        except _Skip as e:
            out.problem(video_id, str(e))
            continue
        for i, (stamp, sentence) in enumerate(zip(stamps, sentences, strict=True)):
            try:
                start, end = _pair(stamp, "timestamp")
                out.add(f"anet:{video_id}:{i}", video_id, sentence, start, end, duration)
            except _Skip as e:
                out.problem(video_id, f"sentence {i}: {e}")
    return out.result()


READERS: dict[str, Callable[..., ReadResult]] = {
    "charades": read_charades,
    "fig": read_fig,
    "didemo": read_didemo,
    "activitynet": read_activitynet,
}


def read_annotations(fmt: str, path, split: str, strict: bool = False, **kw) -> ReadResult:
    """Read one annotation file. A file from which no query at all is read is an error (most
    often the wrong format for the file), not an empty table."""
    if fmt not in READERS:
        raise ValueError(f"unknown annotation format {fmt!r}; known: {sorted(READERS)}")
    result = READERS[fmt](path, split, strict=strict, **kw)
    if result.report.read == 0:
        first = result.report.problems[0] if result.report.problems else None
        raise AnnotationError(
            f"{path}: no valid {fmt} annotation read ({len(result.report.problems)} rows skipped"
            + (f"; the first: {first}" if first else "; the file holds no rows")
            + f"): is it a {fmt} file?")
    return result
