"""What the image pipelines (TextDetector, Detector) share: input loading, batching plans, lifetime."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.image import Resized, load_image


class ImagePipeline:
    """Mixin for pipelines that own ``self.runner`` and a ``self.max_batch`` set at activation."""

    runner: Any
    max_batch: int

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _load(images: Any) -> list[np.ndarray]:
        """One image (array or path) or a sequence of them -> validated BGR uint8 arrays."""
        if isinstance(images, (np.ndarray, str, os.PathLike)):
            images = [images]
        return [load_image(im, i) for i, im in enumerate(images)]

    def _bucket(self, plans: Sequence[Resized]) -> list[list[int]]:
        """Indices grouped by resized shape (same shape -> one call, nothing padded), max_batch per call."""
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, p in enumerate(plans):
            by_shape[p.size].append(i)
        return [idx[k:k + self.max_batch] for idx in by_shape.values() for k in range(0, len(idx), self.max_batch)]

    def _chunks(self, n: int) -> list[list[int]]:
        """Indices in input order, max_batch per call."""
        return [list(range(k, min(k + self.max_batch, n))) for k in range(0, n, self.max_batch)]


def apply_overrides(pre: Mapping[str, Any], post: Mapping[str, Any], overrides: Mapping[str, Any],
                    resize_keys: Sequence[str], post_keys: Sequence[str], what: str) -> tuple[dict, dict]:
    """Copies of a manifest's pre/post-processing dicts with overrides applied: resize keys go to
    ``pre["resize"]``, post-processing keys to ``post``; anything else is an InputError
    ("unknown <what> 'key'") naming both lists. Used by the pipelines and the bundle makers."""
    pre = {**pre, "resize": dict(pre.get("resize", {}))}
    post = dict(post)
    for k, v in overrides.items():
        if k in resize_keys:
            pre["resize"][k] = v
        elif k in post_keys:
            post[k] = v
        else:
            raise InputError(f"unknown {what} {k!r}; expected a postprocess key {sorted(post_keys)} "
                             f"or a resize key {list(resize_keys)}")
    return pre, post
