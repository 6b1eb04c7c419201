from pathlib import Path

import av
import numpy as np
import pytest

from config.schema import SynthConfig, VideoConfig
from corpus.synth import generate_corpus
from corpus.video import (
    CorruptVideoError,
    EmptyVideoError,
    VideoDecodeError,
    VideoNotFoundError,
    decode_video,
    probe_video,
    smart_resize,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 12 s, 4 fps, 64x64 video from the generator."""
    out = tmp_path_factory.mktemp("video_corpus")
    generate_corpus(SynthConfig(num_videos=1, near_duplicate_fraction=0.0), out)
    return out / "videos" / "synth_0000.mp4"


def write_clip(path: Path, frames: int, height: int, width: int, fps: int = 4) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_probe(clip):
    assert probe_video(clip) == (12.0, 4.0, 48)


def test_one_frame_per_second(clip):
    v = decode_video(clip, VideoConfig(fps=1.0, max_frames=64, max_pixels=64 * 64, min_pixels=0))
    assert v.frames.shape == (12, 64, 64, 3) and v.frames.dtype == np.uint8
    np.testing.assert_array_equal(v.timestamps, np.arange(12.0))
    assert (v.duration_s, v.source_fps) == (12.0, 4.0)


def test_decoding_is_cached_per_file_identity_and_settings(tmp_path):
    path = write_clip(tmp_path / "c.mp4", frames=8, height=64, width=64)
    video = VideoConfig(fps=1.0, max_frames=8, max_pixels=64 * 64)
    first = decode_video(path, video)
    assert decode_video(path, video) is first
    assert decode_video(path, VideoConfig(fps=2.0, max_frames=8, max_pixels=64 * 64)) is not first
    assert decode_video(path, video, cache=False) is not first
    write_clip(path, frames=16, height=64, width=64)  # the same path, another file
    again = decode_video(path, video)
    assert again is not first and again.duration_s == 4.0 and first.duration_s == 2.0


def test_frames_match_their_timestamps(clip):
    every = decode_video(clip, VideoConfig(fps=4.0, max_frames=64, max_pixels=64 * 64, min_pixels=0))
    assert len(every.frames) == 48
    sparse = decode_video(clip, VideoConfig(fps=1.0, max_frames=64, max_pixels=64 * 64, min_pixels=0))
    np.testing.assert_array_equal(sparse.frames, every.frames[::4])


def test_max_frames_subsamples_the_whole_video(clip):
    v = decode_video(clip, VideoConfig(fps=2.0, max_frames=8, max_pixels=64 * 64, min_pixels=0))
    assert v.frames.shape[0] == 8
    assert v.timestamps[0] == 0.0 and v.timestamps[-1] == 11.5  # spans the video, not its start
    steps = np.diff(v.timestamps)
    assert steps.min() > 0 and steps.max() - steps.min() <= 0.5  # uniform up to one 2-fps step


def test_sampling_rate_below_one_frame_still_gives_a_frame(clip, tmp_path):
    v = decode_video(clip, VideoConfig(fps=0.01, max_frames=64, max_pixels=64 * 64, min_pixels=0))
    np.testing.assert_array_equal(v.timestamps, [0.0])
    short = write_clip(tmp_path / "short.mp4", frames=1, height=64, width=64)
    v = decode_video(short, VideoConfig(fps=1.0, max_frames=64, max_pixels=64 * 64, min_pixels=0))
    assert v.frames.shape == (1, 64, 64, 3) and v.duration_s == 0.25


@pytest.mark.parametrize(
    "max_pixels, min_pixels, shape",
    [(64 * 64, 32 * 32, (64, 64)), (32 * 32, 0, (32, 32)), (128 * 128 * 2, 100 * 100, (128, 128))],
)
def test_resize_budget(clip, max_pixels, min_pixels, shape):
    v = decode_video(clip, VideoConfig(fps=1.0, max_frames=4, max_pixels=max_pixels, min_pixels=min_pixels))
    assert v.frames.shape[1:3] == shape


def test_resize_keeps_aspect_within_budget(tmp_path):
    wide = write_clip(tmp_path / "wide.mp4", frames=4, height=96, width=192)
    v = decode_video(wide, VideoConfig(fps=1.0, max_frames=4, max_pixels=64 * 64, min_pixels=0))
    assert v.frames.shape[1:3] == (32, 64)


@pytest.mark.parametrize("size", [(360, 480), (1080, 1920), (20, 500), (64, 64), (10, 10)])
@pytest.mark.parametrize("budget", [(32 * 32, 0), (64 * 64, 32 * 32), (448 * 448, 112 * 112)])
def test_smart_resize(size, budget):
    max_pixels, min_pixels = budget
    h, w = smart_resize(*size, factor=32, min_pixels=min_pixels, max_pixels=max_pixels)
    assert h % 32 == 0 and w % 32 == 0 and h >= 32 and w >= 32
    assert h * w <= max_pixels and h * w >= min_pixels
    assert (h >= w) == (size[0] >= size[1]) or 32 in (h, w)  # orientation kept unless clamped


def _first_half(clip: Path) -> bytes:
    data = clip.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "content, error",
    [
        (None, VideoNotFoundError),
        (lambda clip: b"", EmptyVideoError),
        (_first_half, CorruptVideoError),
        (lambda clip: np.random.default_rng(0).bytes(4096), CorruptVideoError),
    ],
    ids=["missing", "empty", "truncated", "garbage"],
)
def test_bad_files_raise_typed_errors(clip, tmp_path, content, error):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content(clip))
    for call in (lambda: decode_video(path, VideoConfig(fps=1.0, max_frames=8, max_pixels=64 * 64)), lambda: probe_video(path)):
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, VideoDecodeError)
        assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize("width", [16, 24, 48])
def test_narrow_frames_decode_at_the_target_size(tmp_path, width):
    """decord cannot convert frames of these widths at full size ("from_size == to_size");
    decoding straight to the target size works."""
    path = write_clip(tmp_path / f"w{width}.mp4", frames=8, height=32, width=width)
    v = decode_video(path, VideoConfig(fps=2.0, max_frames=8, max_pixels=64 * 64, min_pixels=32 * 32),
                     cache=False)
    assert v.decoder == "decord" and v.frames.shape[0] == 4 and v.frames.shape[1] == 32


def test_a_file_decord_cannot_read_is_decoded_by_pyav(tmp_path):
    """An animated GIF: decord fails to open it, PyAV reads it; the same sampling rule applies."""
    path = tmp_path / "clip.gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb8"
        for i in range(8):  # brighter every frame
            img = np.full((64, 64, 3), 30 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    with pytest.raises(Exception):  # noqa: B017 - decord's own error type is untyped
        import decord
        decord.VideoReader(str(path))
    v = decode_video(path, VideoConfig(fps=2.0, max_frames=8, max_pixels=64 * 64), cache=False)
    assert v.decoder == "pyav" and v.duration_s == 2.0 and list(v.timestamps) == [0.0, 0.5, 1.0, 1.5]
    means = v.frames.reshape(4, -1).mean(axis=1)
    assert all(np.diff(means) > 20)  # frames 0, 2, 4, 6: the sampled ones, in order
