"""A corpus on disk (videos.parquet + queries.parquet) as the job uses it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corpus.schema import read_queries, read_videos


@dataclass
class Query:
    """One annotated moment to find: the text and where the ground truth is."""
    query_id: str
    text: str
    video_id: str
    start_s: float
    end_s: float


@dataclass
class CorpusTables:
    videos_path: Path
    queries_path: Path
    video_paths: dict[str, str]  # video_id -> absolute path
    rows: list[dict]  # the query table
    # Every annotated moment (video_id, text, start_s, end_s, split) where the corpus knows
    # more than its queries (the synthetic one: every event); None: the queries are all.
    moments: list[dict] | None = field(default=None)

    def queries(self, split: str) -> list[Query]:
        return [Query(r["query_id"], r["text"], r["video_id"], r["start_s"], r["end_s"])
                for r in self.rows if r["split"] == split]

    def annotated(self, split: str) -> list[dict]:
        """The moments of a split's videos that training targets may describe."""
        return [r for r in (self.rows if self.moments is None else self.moments)
                if r["split"] == split]

    def video_path(self, video_id: str) -> str:
        return self.video_paths[video_id]


def load_corpus(videos_path: str | Path, queries_path: str | Path,
                moments: list[dict] | None = None) -> CorpusTables:
    """Relative video paths are resolved against the folder of videos.parquet; queries whose
    video is not in the videos table are an error naming them."""
    videos_path, queries_path = Path(videos_path), Path(queries_path)
    base = videos_path.parent
    paths = {r["video_id"]: str((base / r["path"]).resolve())
             for r in read_videos(videos_path).to_pylist()}
    rows = read_queries(queries_path).to_pylist()
    missing = sorted({r["video_id"] for r in rows} - set(paths))
    if missing:
        raise ValueError(f"{queries_path}: {len(missing)} queries name videos missing from "
                         f"{videos_path}: {missing[:5]}")
    return CorpusTables(videos_path, queries_path, paths, rows, moments)


def load_built_corpus(directory: str | Path, source: str) -> CorpusTables:
    """The corpus `videosearch corpus build` wrote into `directory`; its queries must come
    from the `source` format the config names (a preset pointed at the wrong corpus fails
    here, not in training)."""
    directory = Path(directory)
    if not (directory / "videos.parquet").is_file():
        raise FileNotFoundError(
            f"corpus.video_dir={directory} holds no videos.parquet: build it with `videosearch "
            f"corpus build --format {source} --annotations SPLIT=PATH --videos DIR --out {directory}`")
    corpus = load_corpus(directory / "videos.parquet", directory / "queries.parquet")
    sources = sorted({r["source"] for r in corpus.rows})
    if sources != [source]:
        raise ValueError(f"corpus.source={source} but {corpus.queries_path} holds {sources} "
                         f"queries: set corpus.source to the format the corpus was built from")
    return corpus
