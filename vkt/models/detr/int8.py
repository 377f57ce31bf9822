"""INT8 for DETR (transformers' DetrForObjectDetection): the recipe, its gate metric and its keep-list.

    DetrRecipe().quantize(bundle, Int8Config(calib=Path("images"), holdout="auto"))
    metric = detr_agreement(bundle, held_out_images)       # COCO AP vs FP32's detections, FP32 computed once
    ranking, steps = keep_list(fp32_model)                 # heads, decoder, encoder attention, ...: cheapest first

Calibrated on: images pre-processed as the manifest says, GPTQ-rounded conv weights, percentile 99.99 ranges.
Judged by: COCO AP of INT8 detections against FP32's on held-out images, budget 2.0 points.
Ranking: a keep-list of node groups instead of a per-layer ranking: the INT8 loss is spread over the transformer,
while keeping the decoder and then the encoder's attention in float recovers it at a few percent of the FLOPs;
the backbone's last-stage residual sums come next, the encoder FFNs and the stem last. The measurements behind
each choice are in docs/MEASUREMENTS.md ("DETR").
Post-processing: vkt.runtime.detection.Detector, which the metric runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from vkt.calibration.config import Int8Config
from vkt.calibration.gate import Metric
from vkt.errors import CalibrationError
from vkt.models.recipe import ImageRecipe

# (group name, pattern on the exported graph's node names), in the order the gate keeps them in float.
# Names are the TorchScript exporter's module paths of transformers' DetrForObjectDetection.
KEEP_GROUPS: tuple[tuple[str, str], ...] = (
    ("heads", r"^/(bbox_predictor|class_labels_classifier)/|^/Sigmoid$"),
    ("decoder", r"^/decoder/"),
    # the encoder's attention and residual sums, the input projection and the position-embedding sums
    ("encoder_attention", r"^/encoder/.*self_attn/|^/encoder/layers\.\d+/Add(_1)?$|^/input_projection/|^/(Add|Mul)(_\d+)?$"),
    # the residual sums of the backbone's last stage ({last}: its index), see the module doc
    ("backbone_residual", r"^/model/encoder/stages\.{last}/layers\.\d+/Add$"),
    ("encoder_ffn", r"^/encoder/"),                                         # the rest: FFNs and LayerNorms
    ("stem", r"^/model/embedder/"),
)
MIN_REFERENCE_BOXES = 20
PERCENTILE = 99.99              # DETR's calibration percentile (the generic default is 99.999; see the module doc)
WEIGHT_ROUNDING = "gptq"


class DetrRecipe(ImageRecipe):
    """The DETR recipe (module doc). ``gt_top``: score each image against FP32's ``gt_top`` best boxes instead of
    those above the bundle's score threshold (for untrained models, whose scores are near-uniform)."""

    family: ClassVar[str] = "detr"
    budget: ClassVar[float | None] = 2.0
    defaults: ClassVar[dict[str, Any]] = {"method": "percentile", "percentile": PERCENTILE,
                                          "weight_rounding": WEIGHT_ROUNDING, "ort_ops": "all"}

    def __init__(self, gt_top: int | None = None):
        self.gt_top = gt_top

    def metric(self, bundle: Any, held: Sequence[Any], config: Int8Config, show_progress: bool = True) -> Metric:
        return detr_agreement(bundle, held, gt_top=self.gt_top, threads=config.threads, show_progress=show_progress)

    def ranking(self, graph: Any, config: Int8Config) -> tuple[list[dict[str, Any]], list[int]] | None:
        # the keep-list, unless --ranking asks the gate to rank layers itself
        return keep_list(graph) if config.ranking is None else None


def keep_list(model: Any, groups: Sequence[tuple[str, str]] = KEEP_GROUPS) -> tuple[list[dict[str, Any]], list[int]]:
    """Gate ranking rows (every node of each group, groups in order) and the step sizes at group boundaries.

    A ``{last}`` in a pattern stands for the index of the backbone's last stage (``/model/encoder/stages.N/``).
    Returns ``(ranking, steps)``: ``ranking`` is ``[{"node", "op", "output_sqnr_db": nan, "group"}]``
    for :func:`vkt.calibration.gate.accuracy_gate`; ``steps`` are ``[0, len(g1), len(g1) + len(g2), ...]``
    (empty groups dropped). Raises CalibrationError when no node matches (not a transformers DETR export).
    """
    rows: list[dict[str, Any]] = []
    steps = [0]
    seen: set[str] = set()
    stages = [int(m.group(1)) for n in model.graph.node if (m := re.match(r"^/model/encoder/stages\.(\d+)/", n.name))]
    for name, pattern in groups:
        if "{last}" in pattern:
            if not stages:
                continue
            pattern = pattern.replace("{last}", str(max(stages)))
        rx = re.compile(pattern)
        nodes = [n for n in model.graph.node if rx.search(n.name) and n.name not in seen]
        if not nodes:
            continue
        seen.update(n.name for n in nodes)
        rows.extend({"node": n.name, "op": n.op_type, "output_sqnr_db": float("nan"), "group": name} for n in nodes)
        steps.append(len(rows))
    if len(steps) == 1:
        raise CalibrationError("no node of the graph matches DETR's keep-list groups (heads, decoder, encoder, stem); "
                               "expected a graph exported by vkt.models.detr.export from transformers' DETR")
    return rows, steps


def agreement_ap(reference: Sequence[Any], detections: Sequence[Any], image_sizes: Sequence[tuple[int, int]],
                 gt_threshold: float = 0.5, gt_top: int | None = None) -> dict[str, float]:
    """COCO AP of ``detections`` scored with ``reference``'s detections as ground truth (labels as categories).

    Ground truth per image: the reference detections scoring > ``gt_threshold``, or its ``gt_top``
    best when given (for untrained models whose scores are near-uniform). Returns AP, AP50, AP75 and
    ``gt_boxes``, the number of ground-truth boxes.
    """
    from vkt.eval.coco import coco_ap, coco_ground_truth, to_coco_results

    if len(reference) != len(detections) or len(reference) != len(image_sizes):
        raise CalibrationError(f"got {len(reference)} reference, {len(detections)} detection sets and {len(image_sizes)} "
                               "image sizes; expected one of each per image")
    cats = sorted({int(c) for d in list(reference) + list(detections) for c in d.labels}) or [0]
    gt_boxes, gt_labels = [], []
    for d in reference:
        keep = np.arange(min(gt_top, len(d))) if gt_top else np.flatnonzero(d.scores > gt_threshold)
        b = np.asarray(d.boxes, np.float64)[keep].reshape(-1, 4)
        b[:, 2] = np.maximum(b[:, 2], b[:, 0])     # a degenerate box stays a (zero-area) box
        b[:, 3] = np.maximum(b[:, 3], b[:, 1])
        gt_boxes.append(b)
        gt_labels.append(np.asarray(d.labels)[keep])
    images = [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(image_sizes)]
    gt = coco_ground_truth(images, [{"id": c, "name": str(c)} for c in cats], gt_boxes, gt_labels)
    m = coco_ap(gt, to_coco_results(detections, [i + 1 for i in range(len(detections))]))
    return {"AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"], "gt_boxes": int(sum(len(b) for b in gt_boxes))}


def detr_agreement(bundle: Any, images: Sequence[Any], *, gt_threshold: float | None = None, gt_top: int | None = None,
                   min_boxes: int = MIN_REFERENCE_BOXES, threads: int | None = None,
                   show_progress: bool = True) -> Callable[[Callable[[], Any]], float]:
    """Gate metric for DETR bundles: ``metric(runner_factory)`` = COCO AP of that runner's detections against FP32's.

    FP32 detections on ``images`` (paths or BGR uint8 arrays) are computed once, through
    :class:`vkt.runtime.detection.Detector` with the bundle's resize rule; a model's detections are
    all its queries (score threshold 0, top 100), its ground truth FP32's above ``gt_threshold``
    (default: the bundle's ``score_threshold``, else 0.5) or FP32's ``gt_top`` best per image.
    Raises CalibrationError when the reference holds fewer than ``min_boxes`` boxes: an AP over so
    few moves by several points per box.
    """
    from vkt.calibration.holdout import load_holdout_images
    from vkt.log import progress
    from vkt.runtime import make_runner
    from vkt.runtime.detection import Detector

    if bundle.task != "object-detection":
        raise CalibrationError(f"detr_agreement scores object detectors; bundle {bundle.name!r} is for task {bundle.task!r}")
    imgs = load_holdout_images(images, "the DETR accuracy gate")
    threshold = float(bundle.postprocess.get("score_threshold", 0.5)) if gt_threshold is None else float(gt_threshold)
    resize = {k: v for k, v in bundle.preprocess.get("resize", {}).items() if k in ("shortest_edge", "longest_edge")}
    spec = bundle.spec()

    def detect(runner: Any) -> list[Any]:
        with Detector(runner, score_threshold=0.0, top_k=100, **resize) as det:
            return [det(im)[0] for im in progress(imgs, "held-out images", enabled=show_progress)]

    ref = detect(make_runner(bundle, "ort", "fp32", threads=threads))
    n = sum(min(gt_top, len(d)) if gt_top else int((d.scores > threshold).sum()) for d in ref)
    if n < min_boxes:
        what = f"its {gt_top} best box(es) per image give {n}" if gt_top else f"FP32 finds {n} box(es) scoring > {threshold:g}"
        raise CalibrationError(f"{what} on the {len(imgs)} held-out image(s); the "
                               f"gate needs at least {min_boxes} to measure a 1-point drop: add held-out images with objects")
    sizes = [im.shape[:2] for im in imgs]

    def metric(factory: Callable[[], Any]) -> float:
        runner = factory()
        if getattr(runner, "_spec", None) is None:
            runner._spec = spec
        return agreement_ap(ref, detect(runner), sizes, threshold, gt_top)["AP"]

    metric.name = "COCO AP vs FP32 detections"  # type: ignore[attr-defined]
    metric.reference = ref  # type: ignore[attr-defined]
    metric.boxes = n  # type: ignore[attr-defined]
    return metric
