"""Corpus: the Arrow/Parquet schemas for queries and videos, readers for the public annotation
formats, the synthetic corpus generator and video decoding."""
