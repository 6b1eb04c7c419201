"""Video decoding: the only module that reads video bytes.

Everything downstream (embedder, policy, rewards) sees frames as a uint8 array with a
timestamp per frame, so the sampling rule lives here once. Decord raises untyped native
errors (or plain RuntimeError) for every kind of bad file; they are mapped to typed
errors naming the file, so a broken corpus entry can be reported or skipped by kind.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np

from config.schema import VideoConfig

# Frame sides are multiples of the vision tower's patch (16) times its spatial merge (2).
SIZE_FACTOR = 32


class VideoDecodeError(Exception):
    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class VideoNotFoundError(VideoDecodeError):
    pass


class EmptyVideoError(VideoDecodeError):
    pass


class CorruptVideoError(VideoDecodeError):
    pass


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    timestamps: np.ndarray  # float64 [T], seconds from the start
    duration_s: float
    source_fps: float
    decoder: str = "decord"  # "pyav" for a file decord could not read


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's rule: sides become multiples of the patch-merge factor, area kept in budget.

    Rounding first keeps the aspect ratio closest; only an out-of-budget result is rescaled.
    A side never drops below `factor`, which wins over a max_pixels smaller than factor**2;
    an aspect ratio too extreme for the budget is squeezed rather than exceeding it.
    """
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
        if h * w > max_pixels:  # extreme aspect: the short side sits at `factor`, trim the long one
            long_side = max(factor, max_pixels // min(h, w) // factor * factor)
            h, w = (long_side, w) if h > w else (h, long_side)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoNotFoundError(path, "not a regular file" if path.exists() else "no such video file")
    if path.stat().st_size == 0:
        raise EmptyVideoError(path, "video file is empty (0 bytes)")


def _open(path: Path, **size) -> decord.VideoReader:
    _check_file(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **size)
    except Exception as e:  # decord raises DECORDError/RuntimeError for anything unreadable
        raise CorruptVideoError(path, f"cannot open video: {_first_line(e)}") from e
    if len(reader) == 0:
        raise EmptyVideoError(path, "video has no frames")
    fps = reader.get_avg_fps()
    if not fps or not math.isfinite(fps) or fps <= 0:
        raise CorruptVideoError(path, f"video reports an unusable frame rate {fps!r}")
    return reader


def _first_line(e: Exception) -> str:
    # Decord appends a multi-line C++ stack trace to its messages.
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read(reader: decord.VideoReader, path: Path, indices: np.ndarray) -> np.ndarray:
    try:
        return reader.get_batch(indices.tolist()).asnumpy()
    except Exception as e:
        raise CorruptVideoError(path, f"cannot decode frames: {_first_line(e)}") from e


def probe_video(path: str | Path) -> tuple[float, float, int]:
    """(duration_s, fps, num_frames); duration is frames/fps, the span frames actually cover."""
    path = Path(path)
    reader = _open(path)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    return num_frames / fps, fps, num_frames


def sample_times(duration_s: float, fps: float, max_frames: int) -> np.ndarray:
    """Times k/fps inside [0, duration); thinned uniformly over the whole video past max_frames.

    At least one frame (t=0) is returned, so a video shorter than one sampling period still
    yields something to look at.
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError(f"need fps > 0 and max_frames >= 1, got fps={fps}, max_frames={max_frames}")
    count = max(1, math.ceil(duration_s * fps - 1e-9))
    times = np.arange(count, dtype=np.float64) / fps
    if count > max_frames:
        times = times[np.round(np.linspace(0, count - 1, max_frames)).astype(np.int64)]
    return times


# Decoded videos kept per process: the rollout shows a video in many turns and the learner
# re-reads each turn's video. 128 tiny videos are a few MB; at the 2B preset's 64 frames of
# 448x448 a video is ~38 MB, so a full cache is ~5 GB of a GPU node's host memory.
DECODE_CACHE_SIZE = 128


def decode_video(path: str | Path, video: VideoConfig, *, cache: bool = True) -> DecodedVideo:
    """The frames the model sees of a video: sampled at `video.fps` (at most `max_frames`,
    spread over the whole video), resized into the pixel budget. Cached per process by path,
    file identity and settings (callers must not write into the arrays); `cache=False` for
    passes that read each video once (indexing, pretraining corpora)."""
    path = Path(path)
    if not cache:
        return _decode(path, video.fps, video.max_frames, video.max_pixels, video.min_pixels)
    try:
        stat = path.stat()
        identity = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        identity = None  # _open names the problem
    return _decode_cached(str(path), identity, video.fps, video.max_frames, video.max_pixels,
                          video.min_pixels)


@functools.lru_cache(maxsize=DECODE_CACHE_SIZE)
def _decode_cached(path: str, identity, fps: float, max_frames: int, max_pixels: int,
                   min_pixels: int) -> DecodedVideo:
    return _decode(Path(path), fps, max_frames, max_pixels, min_pixels)


def _decode(path: Path, fps: float, max_frames: int, max_pixels: int,
            min_pixels: int) -> DecodedVideo:
    """Decord at the target size straight away (it fails to convert some frame widths, 16, 24
    or 48 pixels among them, at full size); PyAV when decord cannot read the file at all."""
    _check_file(path)
    try:
        with av.open(str(path)) as container:  # the size from the header, nothing decoded
            stream = container.streams.video[0]
            height, width = stream.height, stream.width
    except Exception as e:  # PyAV raises its own error types, IndexError for no video stream
        raise CorruptVideoError(path, f"cannot open video: {_first_line(e)}") from e
    if not height or not width:
        raise CorruptVideoError(path, f"video reports an unusable frame size {width}x{height}")
    h, w = smart_resize(height, width, SIZE_FACTOR, min_pixels, max_pixels)
    try:
        reader = _open(path, width=w, height=h)
        num_frames, source_fps = len(reader), float(reader.get_avg_fps())
        times, indices = _sample(num_frames, source_fps, fps, max_frames)
        return DecodedVideo(_read(reader, path, indices), times, num_frames / source_fps, source_fps)
    except (CorruptVideoError, EmptyVideoError) as decord_error:
        try:
            return _decode_pyav(path, fps, max_frames, h, w)
        except Exception:  # PyAV cannot read it either: decord's message is the one to see
            raise decord_error from None


def _sample(num_frames: int, source_fps: float, fps: float, max_frames: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(times, frame indices) of the frames to show from a video of num_frames at source_fps."""
    times = sample_times(num_frames / source_fps, fps, max_frames)
    # Half-up rounding, not numpy's half-to-even, so the frame for t is independent of parity.
    indices = np.clip(np.floor(times * source_fps + 0.5).astype(np.int64), 0, num_frames - 1)
    return times, indices


def _decode_pyav(path: Path, fps: float, max_frames: int, h: int, w: int) -> DecodedVideo:
    """Decoded in order, no seeking (a file decord failed on may have no usable index). The
    frames are counted in a first pass up to the first undecodable packet (a truncated file's
    header promises frames that are not there), then only the sampled ones are converted."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or 0)
        num_frames = sum(1 for _ in _frames(container))
    if not num_frames:
        raise EmptyVideoError(path, "video has no decodable frames")
    if not source_fps > 0:
        raise CorruptVideoError(path, f"video reports an unusable frame rate {source_fps!r}")
    times, indices = _sample(num_frames, source_fps, fps, max_frames)
    wanted = set(indices.tolist())
    with av.open(str(path)) as container:
        kept = {i: f.to_ndarray(width=w, height=h, format="rgb24")
                for i, f in enumerate(_frames(container)) if i in wanted}
    if len(kept) < len(wanted):
        raise CorruptVideoError(path, f"decoded {len(kept)} of the {len(wanted)} sampled frames")
    return DecodedVideo(np.stack([kept[i] for i in indices]), times, num_frames / source_fps,
                        source_fps, decoder="pyav")


def _frames(container):
    """The video stream's frames in order, ending quietly at the first one that fails."""
    frames = container.decode(container.streams.video[0])
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.FFmpegError:
            return
