"""Evaluation metrics: ICDAR-style text detection (vkt.eval.textdet); numpy + shapely, no torch."""
