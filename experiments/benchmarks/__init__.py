"""Benchmark scripts: each prints a table and writes JSON (never timed tests)."""
