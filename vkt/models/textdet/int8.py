"""INT8 for DB text detectors (PP-OCRv5 mobile and the like): the recipe, and its gate metric.

    TextdetRecipe().quantize(bundle, Int8Config(calib=Path("photos"), holdout=Path("pages")))

Calibrated on: images pre-processed as the manifest says (its resize rule sets the shapes).
Judged by: hmean of INT8 boxes vs FP32 boxes on held-out images (:func:`textdet_metric`), budget 1.0 point;
with ``holdout_labels`` also the hmean drop vs ICDAR labels beside them.
Defaults: placements for onnxruntime, TensorRT and OpenVINO (each CPU one gated on its own runner; the openvino one's float
layers in bf16 where the CPU has it natively, as OpenVINO itself defaults there); percentile ranges
(99.999), nearest weights, the openvino placement bias-corrected (vkt.calibration.bias: PP-OCRv5 mobile, every conv
INT8, hmean vs FP32 0.979 -> 0.989 on 360 boxes of 40 synthetic pages); without a holdout the "ort" placement quantizes the
convs only ("compute": the elementwise chains stay float), with one every op ("all") and the gate keeps a float
prefix ("prefix" ranking, every 4th conv); why, measured, in docs/MEASUREMENTS.md ("INT8 on PP-OCRv5 mobile").
Post-processing: vkt.runtime.textdet.TextDetector (DB), which the metric runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vkt.calibration.config import Int8Config
from vkt.calibration.gate import Metric
from vkt.errors import CalibrationError
from vkt.log import progress
from vkt.models.recipe import ImageRecipe

# Below this many FP32 regions on the held-out images, an hmean moves by > 1 point per box: too
# coarse to gate a 1-point budget.
MIN_HOLDOUT_REGIONS = 20


class TextdetRecipe(ImageRecipe):
    """The text-detection recipe (module doc)."""

    family: ClassVar[str] = "textdet"
    budget: ClassVar[float | None] = 1.0
    defaults: ClassVar[dict[str, Any]] = {"method": "percentile", "percentile": 99.999, "weight_rounding": "nearest",
                                          "ranking": "prefix", "targets": ("ort", "trt", "openvino"), "bias_correction": True,
                                          "float_precision": "auto"}
    labels: ClassVar[bool] = True

    def resolve(self, config: Int8Config) -> Int8Config:
        # Ungated, "compute" keeps accuracy with every conv INT8; gated, "all" with a float prefix is faster.
        return super().resolve(config.filled(ort_ops="all" if config.gated else "compute"))

    def metric(self, bundle: Any, held: Sequence[Any], config: Int8Config, show_progress: bool = True) -> Metric:
        return textdet_metric(bundle, held, threads=config.threads, show_progress=show_progress,
                              use_labels=config.holdout_labels)


def textdet_metric(bundle: Any, holdout: Sequence[Path], threads: int | None = None, show_progress: bool = True,
                   use_labels: bool = False) -> Metric:
    """The text-detection gate metric on held-out images: hmean of the INT8 boxes against FP32's.

    With ``use_labels`` and ICDAR labels beside some held-out images (``gt_<image stem>.txt``, as ``vkt synth
    textdet`` writes), the metric is ``min(agreement, 1 - (FP32's hmean vs labels - INT8's))``, so the budget
    bounds both drops. Off by default: near IoU 0.5 the hmean vs labels swings between steps whose boxes agree
    with FP32's, so the gate would choose by that noise (docs/MEASUREMENTS.md); the paired agreement is steadier.
    """
    from vkt.eval.textdet import gt_path_for, load_icdar_gt

    labels = {}
    for p in holdout if use_labels else ():
        gt = gt_path_for(Path(p), Path(p).parent)
        if gt is not None:
            labels[Path(p)] = load_icdar_gt(gt)
    if use_labels and not labels:
        raise CalibrationError("use_labels: none of the held-out images has an ICDAR label file beside it "
                               "(gt_<image stem>.txt, as `vkt synth textdet` writes)")
    m = textdet_agreement(bundle, holdout, threads=threads, show_progress=show_progress, labels=labels or None)
    m.name = ("min(hmean vs FP32 boxes, 1 - hmean drop vs labels)" if labels else "hmean vs FP32 boxes")  # type: ignore[attr-defined]
    return m


def textdet_agreement(bundle: Any, images: Sequence[Any], *, min_regions: int = MIN_HOLDOUT_REGIONS,
                      iou_thresh: float = 0.5, threads: int | None = None, show_progress: bool = True,
                      labels: Mapping[Any, Sequence[Any]] | None = None) -> Metric:
    """Text-detection gate metric: hmean of a model's boxes scored against the bundle's FP32 boxes.

    FP32 detections on ``images`` (paths or BGR uint8 arrays) are computed once here, through
    :class:`vkt.runtime.textdet.TextDetector` with the bundle's pre/post-processing. Raises
    CalibrationError when FP32 finds fewer than ``min_regions`` regions in all (default 20): an
    hmean over so few boxes moves by more than a point per box.

    ``labels``: ground truth (GtRegion lists or polygons) for some of ``images``, keyed by the same
    objects (paths). The metric is then ``min(agreement, 1 - (FP32 hmean - model hmean))`` over the
    labelled images: agreement with FP32 can stay high while boxes near the IoU threshold of the
    labels move, so the budget bounds both. ``metric.last`` holds the parts of the latest call.
    """
    from vkt.calibration.holdout import load_holdout_images
    from vkt.eval.textdet import evaluate, hmean_between
    from vkt.runtime import make_runner

    if bundle.task != "text-detection":
        raise CalibrationError(f"textdet_agreement scores text detectors; bundle {bundle.name!r} is for task {bundle.task!r}")
    imgs = load_holdout_images(images, "the text-detection gate")
    spec = bundle.spec()
    overrides = {k: v for k, v in bundle.postprocess.items() if k != "type"}
    overrides.update({k: v for k, v in bundle.preprocess.get("resize", {}).items()
                      if k in ("limit_side_len", "limit_type", "round_to", "max_side_len")})
    overrides.update({k: v for k, v in bundle.preprocess.items() if k in ("mean", "std", "scale", "color")})

    def detect(runner: Any) -> list[list[np.ndarray]]:
        from vkt.runtime.textdet import TextDetector

        with TextDetector(runner, **overrides) as det:
            return [det([im])[0].polygons for im in progress(imgs, "held-out images", enabled=show_progress)]

    ref = detect(make_runner(bundle, "ort", "fp32", threads=threads))
    n = sum(len(r) for r in ref)
    if n < min_regions:
        raise CalibrationError(f"FP32 finds {n} text region(s) on the {len(imgs)} held-out image(s); the gate needs at least "
                               f"{min_regions} to measure a 1-point drop: add held-out images with text")
    by_path = {Path(k): v for k, v in (labels or {}).items()}
    labelled = [i for i, im in enumerate(images) if isinstance(im, (str, os.PathLike)) and Path(im) in by_path]
    gts = [by_path[Path(images[i])] for i in labelled]

    def vs_labels(dets: Sequence[Any]) -> float:
        return evaluate([dets[i] for i in labelled], gts, iou_thresh=iou_thresh)["hmean"]

    fp32_labels = vs_labels(ref) if labelled else None

    def metric(factory: Callable[[], Any]) -> float:
        runner = factory()
        if getattr(runner, "_spec", None) is None:
            runner._spec = spec  # bare runners: give them the bundle's profile (TextDetector caps sizes by it)
        dets = detect(runner)
        agreement = hmean_between(dets, ref, iou_thresh)
        metric.last = {"agreement": agreement}  # type: ignore[attr-defined]
        if not labelled:
            return agreement
        got = vs_labels(dets)
        metric.last.update(labels_hmean=got, labels_fp32=fp32_labels)  # type: ignore[attr-defined]
        return min(agreement, 1.0 - (fp32_labels - got))

    metric.reference = ref  # type: ignore[attr-defined]
    metric.regions = n  # type: ignore[attr-defined]
    # The smallest drop one region can make: one FP32 region missed, hmean 2(n-1)/(2n-1). A budget below it can only
    # pass steps that change nothing here (the gate warns: vkt.calibration.api.gate_bundle).
    metric.resolution = 1.0 / (2 * n - 1)  # type: ignore[attr-defined]
    metric.labelled = len(labelled)  # type: ignore[attr-defined]
    metric.last = {}  # type: ignore[attr-defined]
    return metric
