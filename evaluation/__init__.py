"""Evaluation metrics and submission writers, computed from a predictions table (one row per query and turn)."""
