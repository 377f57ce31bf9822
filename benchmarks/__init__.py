"""vkt's benchmark suite: headline benchmarks, diagnostics, one row schema (schema.py), one entry point (run.py)."""
