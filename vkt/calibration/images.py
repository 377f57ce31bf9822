"""INT8 from image folders: feeds pre-processed as the bundle's manifest says, calibration on them, the gate on
held-out images. Family-blind: a recipe (vkt.models) brings the defaults, the metric and any ranking.

    split = resolve_holdout(cfg.calib, cfg.holdout, cfg.num_images)           # vkt.calibration.holdout
    cal = calibrate_images(bundle, split, cfg)                                # table + Q/DQ graph per target
    section = gate_images(bundle, cal, metric, split, gate_config)            # with held-out images
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.api import Calibrated, calibrate_bundle, gate_bundle
from vkt.calibration.config import Int8Config
from vkt.calibration.data import ImageFolderReader, resize_feed
from vkt.calibration.gate import GateCandidate, GateConfig, Metric
from vkt.calibration.holdout import HoldoutSplit
from vkt.errors import CalibrationError

Preprocess = Callable[[Path], Mapping[str, np.ndarray]]


def image_preprocess(bundle: Any, component: str = "model") -> Any:
    """``preprocess(path)`` from the manifest (vkt.runtime.image) or, without a preprocess section, pixels / 255."""
    spec = bundle.spec(component)
    images = [t for t in spec.inputs if len(t.shape) == 4 and t.dtype == "float32"]
    if len(spec.inputs) != 1 or not images:
        raise CalibrationError(f"`vkt quantize --calib DIR` feeds one [N, 3, H, W] float32 image input; component {component!r} "
                               f"takes {[(t.name, t.dtype, list(t.shape)) for t in spec.inputs]}; call "
                               "vkt.calibration.quantize_bundle() with your own feeds instead")
    name = images[0].name
    cfg = bundle.preprocess
    if cfg.get("resize"):
        from vkt.runtime.image import Preprocessor, read_image

        max_side = None
        if spec.profiles:
            hw = [spec.profiles[0].axes[d][2] for d in images[0].shape[2:] if isinstance(d, str) and d in spec.profiles[0].axes]
            max_side = min(hw) if hw else None
        pre = Preprocessor(cfg, max_side=max_side)
        return lambda path: {name: pre([read_image(path)])[0]}
    from vkt.calibration.data import simple_image_preprocess

    return simple_image_preprocess(name, scale=float(cfg.get("scale", 1 / 255)), mean=cfg.get("mean", (0.0, 0.0, 0.0)),
                                   std=cfg.get("std", (1.0, 1.0, 1.0)), color=cfg.get("color", "BGR"))


class _SplitReader(ImageFolderReader):
    """An ImageFolderReader over the images a split leaves for calibration; the manifest notes those held out."""

    def __init__(self, split: HoldoutSplit, folder: Path, preprocess: Preprocess, **kwargs: Any):
        super().__init__(folder, preprocess, paths=split.calib, **kwargs)
        self.held_out = len(split.held) if split.how == "auto" else 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **({"held_out_for_gate": self.held_out} if self.held_out else {})}


def calibrate_images(bundle: Any, split: HoldoutSplit, config: Int8Config, *, component: str = "model",
                     show_progress: bool = True) -> Calibrated:
    """Calibrate the bundle on ``split.calib`` (``config.calib``'s images less any held out), pre-processed as the
    manifest says, at ``config.shapes`` (None: the manifest's resize rule, or shapes inside the profile when it has
    none); writes the table and a Q/DQ graph per target (:func:`vkt.calibration.api.calibrate_bundle`; the placements'
    error vs FP32 on 2 calibration images is measured unless a held-out folder says a gate follows)."""
    from vkt.calibration.data import calibration_shapes

    if config.calib is None:
        raise CalibrationError("image calibration needs a folder of images (--calib DIR)")
    spec = bundle.spec(component)
    shapes = config.shapes
    if shapes is None and not bundle.preprocess.get("resize"):
        shapes = calibration_shapes(spec)
    reader = _SplitReader(split, config.calib, image_preprocess(bundle, component), shapes=shapes, spec=spec,
                          show_progress=show_progress)
    # With a held-out folder the gate follows and measures the graph it ships on the family's metric: the per-layer
    # error of the ungated placements (2 feeds through every placement, ~15% of a gated export) would describe graphs
    # that do not ship. An "auto" split may still ship ungated (too few regions to judge): measured there.
    eval_samples = 0 if split.held and split.how != "auto" else 2
    return calibrate_bundle(bundle, reader, config, component=component, eval_samples=eval_samples,
                            show_progress=show_progress)


def gate_images(bundle: Any, calibrated: Calibrated, metric: Metric, split: HoldoutSplit, config: GateConfig, *,
                ranking: Sequence[Mapping[str, Any]] | None = None, candidates: Sequence[GateCandidate] = (),
                component: str = "model", show_progress: bool = True) -> dict[str, Any]:
    """:func:`vkt.calibration.api.gate_bundle` on ``split.held``, from the graph ``calibrated`` was written from.

    Ranking feeds: two calibration images, at their deployment size for the "tensor" ranking (ranked at 320x320 on
    PP-OCRv5 it kept the wrong tensors), at a small size for the others; none for "prefix" or a given ``ranking``.
    Latency: the first held-out image resized to the profile's opt size (batch 1), the input ``vkt bench`` times by
    default, so the printed speed-up is the one a user re-times (:func:`bench_shape`).
    """
    if not split.held:
        raise CalibrationError("the accuracy gate needs held-out images; the split holds none")
    pre = image_preprocess(bundle, component)
    if ranking is not None or config.ranking == "prefix":
        sens: list[Mapping[str, np.ndarray]] = []
    elif config.ranking == "tensor":
        sens = [pre(p) for p in split.calib[:2]]
    else:
        sens = [resize_feed(pre(p), _small(bundle.spec(component))) for p in split.calib[:2]]
    first = pre(split.held[0])
    hw = bench_shape(bundle.spec(component))
    latency = resize_feed(first, hw) if hw else first
    if config.placement == "openvino":  # scored in what calibration resolved and recorded for the placement
        config = replace(config, float_precision=calibrated.float_precision)
    return gate_bundle(bundle, metric, config, sensitivity_feeds=sens, latency_feed=latency, component=component,
                       candidates=candidates, ranking=ranking, fp32_graph=calibrated.graph, holdout=split.record(),
                       bias=calibrated.bias if config.placement == "openvino" else None,
                       show_progress=show_progress)


def bench_shape(spec: Any) -> tuple[int, int] | None:
    """(H, W) of the image input at the first profile's opt sizes (what ``vkt bench`` times), or None: no profile."""
    if not spec.profiles:
        return None
    axes = spec.profiles[0].axes
    hw = [axes[d][1] for d in spec.inputs[0].shape[2:] if isinstance(d, str) and d in axes]
    return (hw[0], hw[1]) if len(hw) == 2 else None


def _small(spec: Any) -> tuple[int, int]:
    """A small (H, W) inside the profile for sensitivity ranking: 320 when allowed, rounded to 32."""
    if spec.profiles:
        axes = spec.profiles[0].axes
        hw = [axes[d] for d in spec.inputs[0].shape[2:] if isinstance(d, str) and d in axes]
        if len(hw) == 2:
            return tuple(min(hi, max(lo, 320)) for lo, _, hi in hw)  # type: ignore[return-value]
    return (320, 320)
