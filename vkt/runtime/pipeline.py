"""What the image pipelines (TextDetector, Detector) share: set-up from a bundle or runner, batch caps, input
loading, batching plans, lifetime."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.image import Resized, load_image

DEFAULT_BATCH_CAP = 8  # images per call for a dynamic batch axis without a profile

Settings = tuple[dict[str, Any], dict[str, Any]]


def open_source(source: Any, task: str, who: str, settings: Callable[[Mapping[str, Any], Mapping[str, Any]], Settings],
                backend: Any = "ort", precision: str = "fp32", threads: int | None = None) -> tuple[Any, dict, dict]:
    """(runner, preprocess, postprocess) of a pipeline over ``source``.

    ``source``: a Runner (then ``vkt.tasks.TASKS[task]``'s pre/post-processing apply) or a bundle
    (``vkt.bundle.Bundle`` or its folder) whose task must be ``TASKS[task].task`` (InputError naming both,
    ``who`` being the pipeline). ``settings(pre, post)`` applies and checks the caller's overrides before
    any model file is opened; backend, precision and threads go to ``vkt.runtime.choose.open_runner`` for a bundle.
    ``backend``: a backend name, "auto" (the faster CPU backend, timed on the bundle's model) or a mapping / text
    naming the one component ``{"model": "ov"}`` / ``"model=ov"`` (``vkt.runtime.choose.parse_backends``).
    """
    from vkt.bundle import Bundle
    from vkt.runtime.base import Runner
    from vkt.runtime.choose import open_runner, parse_backends
    from vkt.tasks import TASKS

    t = TASKS[task]
    chosen = parse_backends(backend, ("model",))["model"]  # checked before anything is opened
    if isinstance(source, Runner):
        pre, post = settings(t.preprocess, t.postprocess)
        return source, pre, post
    bundle = source if isinstance(source, Bundle) else Bundle.load(source)
    if bundle.task != t.task:
        raise InputError(f"bundle {bundle.name!r} is for task {bundle.task!r}; {who} needs {t.task!r}")
    pre, post = settings(bundle.preprocess, bundle.postprocess)
    return open_runner(bundle, chosen, precision=precision, threads=threads), pre, post


def batch_cap(spec: Any, input_name: str) -> int:
    """Most images one call of the graph takes: its static batch, else the first profile's max batch, else 8."""
    first = spec.input(input_name).shape[0]
    if isinstance(first, int):
        return first
    profile = spec.profiles[0].axes if spec.profiles else {}
    return profile[first][2] if first in profile else DEFAULT_BATCH_CAP


def batch_limit(spec: Any, input_name: str, requested: Any) -> int:
    """Images per model call: ``requested`` (None: the cap) capped by :func:`batch_cap`; InputError unless a
    positive integer."""
    cap = batch_cap(spec, input_name)
    mb = requested or cap
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise InputError(f"max_batch must be a positive integer, got {mb!r}")
    return min(mb, cap)


class ImagePipeline:
    """Base of the image pipelines: :meth:`_open` keeps the runner and settings and activates; the subclass's
    ``activate()`` calls :meth:`_start` (runner, input name, ``max_batch``) and then checks its own graph."""

    runner: Any
    max_batch: int
    input_name: str

    def _open(self, runner: Any, pre: dict[str, Any], max_batch: Any) -> None:
        """Keep the runner, the checked ``preprocess`` dict and the ``max_batch`` asked for; then ``activate()``."""
        self.runner, self._pre_cfg, self._max_batch_arg = runner, pre, max_batch
        self.pre: Any = None
        self.activate()

    def activate(self) -> Any:
        raise NotImplementedError

    def _start(self) -> Any:
        """Activate the runner, name the image input (the manifest's ``input``, else the graph's first) and set
        ``max_batch`` (:func:`batch_limit`); returns the graph's spec."""
        self.runner.activate()
        spec = self.runner.spec
        self.input_name = self._pre_cfg.get("input") or spec.input_names[0]
        self.max_batch = batch_limit(spec, self.input_name, self._max_batch_arg)
        return spec

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
                    resize_keys: Sequence[str], post_keys: Sequence[str], what: str,
                    pre_keys: Sequence[str] = ()) -> tuple[dict, dict]:
    """Copies of a manifest's pre/post-processing dicts with overrides applied: resize keys go to
    ``pre["resize"]``, post-processing keys to ``post``, ``pre_keys`` (normalisation: mean, std, ...) to ``pre``
    (tuples and arrays as lists, JSON-ready); anything else is an InputError ("unknown <what> 'key'") naming
    the lists. Used by the pipelines' settings functions (textdet_settings, detr_settings)."""
    pre = {**pre, "resize": dict(pre.get("resize", {}))}
    post = dict(post)
    for k, v in overrides.items():
        if k in pre_keys:
            pre[k] = np.asarray(v).tolist() if isinstance(v, (tuple, np.ndarray)) else v
        elif k in resize_keys:
            pre["resize"][k] = v
        elif k in post_keys:
            post[k] = v
        else:
            kinds = [f"a postprocess key {sorted(post_keys)}", f"a resize key {list(resize_keys)}"]
            kinds += [f"a normalisation key {list(pre_keys)}"] if pre_keys else []
            raise InputError(f"unknown {what} {k!r}; expected {', '.join(kinds[:-1])} or {kinds[-1]}")
    return pre, post
