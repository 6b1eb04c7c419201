"""Arrow schemas shared by every corpus source, so the rest of the system reads one layout.

Queries and videos are kept in Parquet; reading checks the columns up front so a stale or
foreign file fails here, naming the file, rather than deep inside a training step.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

QUERY_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("video_id", pa.string()),
        ("text", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("split", pa.string()),
        ("source", pa.string()),
    ]
)

VIDEO_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("num_frames", pa.int64()),
    ]
)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    # from_pylist would fill a missing key with null without complaint.
    for i, row in enumerate(rows):
        missing = [n for n in schema.names if row.get(n) is None]
        if missing:
            raise ValueError(f"row {i}: missing values for {missing}")
    return pa.Table.from_pylist(rows, schema=schema)


def queries_table(rows: list[dict]) -> pa.Table:
    return _table(rows, QUERY_SCHEMA)


def videos_table(rows: list[dict]) -> pa.Table:
    return _table(rows, VIDEO_SCHEMA)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Only the two known layouts are written, so every Parquet file here reads back."""
    if not (table.schema.equals(QUERY_SCHEMA) or table.schema.equals(VIDEO_SCHEMA)):
        raise ValueError(
            f"{path}: table schema matches neither QUERY_SCHEMA nor VIDEO_SCHEMA:\n{table.schema}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _read(path: str | Path, schema: pa.Schema) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such Parquet file: {path}")
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from e
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected {schema.names})")
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{path}: columns do not match the schema: {e}") from e
    nulls = [n for n in schema.names if table[n].null_count]
    if nulls:
        raise ValueError(f"{path}: null values in columns {nulls}")
    return table


def read_queries(path: str | Path) -> pa.Table:
    return _read(path, QUERY_SCHEMA)


def read_videos(path: str | Path) -> pa.Table:
    return _read(path, VIDEO_SCHEMA)
