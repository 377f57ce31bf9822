"""INT8 for DETR: the accuracy gate's metric (COCO AP of a model's detections against FP32's) and its keep-list.

    metric = detr_agreement(bundle, holdout_images)        # FP32 detections computed once
    ranking, steps = keep_list(fp32_model)                 # heads, decoder, encoder attention, ...: cheapest first
    gate_bundle(bundle, metric, ranking=ranking, steps=steps, ...)

Why a keep-list instead of per-layer ranking: on the trained reduced model the INT8-vs-FP32 AP loss
is spread over the transformer (no single layer holds it: keeping any one group of encoder or decoder
nodes in float moved AP by < 0.03) while keeping the decoder and then the encoder's attention in float
recovers it (measured on the stride-16 reduced model, 64 synthetic images: AP 0.89 all INT8, 0.93 with
heads + decoder float, 0.998 with the encoder's attention too; its FFNs add nothing). On DETR-R50 the
decoder and heads are ~1% of the FLOPs, the encoder's attention ~4% and its FFNs ~7%, so the backbone
and the encoder FFNs stay INT8. The ResNet stem (the first conv, reading the image) comes last: it
mattered on photos only when calibration had seen no photos.

Calibration defaults (what is left after the keep-list is INT8 backbone activation noise: on the
trained reduced model with the shipped keep-list step, weights alone in int8 kept AP 1.000 on the
photos, the backbone's activations in float too 1.000, any one backbone stage in float removed
only 15-30% of the box error): GPTQ-rounded conv weights (:mod:`vkt.calibration.weights`) and
percentile 99.99 ranges. Measured on that model (8 scored photos, their mirror images, 16 centre
crops; box error = mean |pred_boxes - FP32| of FP32's > 0.5 queries): nearest + 99.999 (the
previous default) AP 0.959 / 0.978 / 0.977, box error 1.8e-3; GPTQ + 99.99 AP 0.985 / 0.993 / 0.988,
box error 1.4e-3; 99.95, 99.98 and 99.995 lie between; GPTQ of the transformer's MatMul weights
added nothing. Over four calibration draws (synthetic seeds 7-10) the scored photos still ranged
0.965-0.988 (mean 0.978); bias correction, 48 synthetic images or mirrored/cropped calibration
photos did not move that. What did: the backbone's residual sums in float (a float Add leaves the
convs feeding it float on onnxruntime, no QLinearConv): the last stage's alone 0.987 mean (min
0.978), the last two stages' 0.995 (min 0.989), all 0.995; on DETR-R50 (2 threads, interleaved) the
keep step with the encoder's attention in float ran 2.29x FP32, + the last stage's sums 2.05x,
+ the stage before too 1.76x, all sums 1.45x. Hence the ``backbone_residual`` group: the last stage's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import CalibrationError

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
    from vkt.calibration.gate import load_holdout_images
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


def split_holdout(folder: str | Path, every: int = 4, min_images: int = 8) -> tuple[list[Path], list[Path]] | None:
    """(calibration, held-out) image paths of ``folder``: every ``every``-th image (sorted) held out.

    None when the folder has fewer than ``min_images`` images (too few to spare any).
    """
    paths = _images(folder)
    if len(paths) < min_images:
        return None
    held = paths[every - 1::every]
    return [p for p in paths if p not in held], held


class _PathFeeds:
    """Feeds from a list of image paths (one image per feed), described for the manifest; unreadable images skipped."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Path], dict], source: dict[str, Any]):
        self.paths, self.pre, self.source = list(paths), preprocess, source

    def __iter__(self) -> Any:
        from vkt.log import get_logger

        ok = 0
        for p in self.paths:
            try:
                feed = self.pre(p)
            except Exception as e:
                get_logger(__name__).warning("skipping calibration image %s: %s", p, str(e).splitlines()[0][:200])
                continue
            ok += 1
            yield feed
        if not ok:
            raise CalibrationError(f"none of the {len(self.paths)} calibration image(s) could be read and pre-processed")

    def describe(self) -> dict[str, Any]:
        return {**self.source, "images": len(self.paths)}


def quantize_detr(bundle: Any, calib: str | Path, *, holdout: str | Path | None = None, gate: bool = True,
                  method: str = "percentile", targets: Sequence[str] = ("ort", "trt"), num_images: int | None = None,
                  max_drop: float = 0.02, on_fail: str = "fp32", gt_top: int | None = None, threads: int | None = None,
                  percentile: float = PERCENTILE, weight_rounding: str = WEIGHT_ROUNDING,
                  show_progress: bool = True) -> dict[str, Any]:
    """Calibrate a DETR bundle on ``calib`` images and, with ``gate``, ship what the accuracy gate chooses.

    Held-out images: ``holdout`` (a folder), or every 4th image of ``calib`` when it holds >= 8 (those are
    then left out of calibration); with neither, the INT8 graphs ship ungated and a warning says so.
    The gate (metric :func:`detr_agreement`, ranking :func:`keep_list`, budget ``max_drop`` of AP, 0.02
    default) chooses the onnxruntime placement; the TensorRT placement is rewritten with the same nodes
    in float (its accuracy is not measured on CPU), or removed with it when nothing fits.
    ``percentile`` (method "percentile") and ``weight_rounding`` ("gptq": conv weights rounded with
    GPTQ on the calibration images, which both placements then reproduce; "nearest") default to
    what measured best on DETR (module doc). Returns the manifest's calibration section.
    """
    from vkt.bundle import Bundle
    from vkt.calibration.api import _quantize_bundle, gate_bundle, image_preprocess
    from vkt.calibration.gate import holdout_images
    from vkt.log import get_logger

    log = get_logger(__name__)
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    held: list[Path] = []
    split = None
    if gate and holdout is not None:
        held = holdout_images(holdout)
    elif gate:
        split = split_holdout(calib)
        if split is None:
            log.warning("calibration folder %s has fewer than 8 images: none held out, so the INT8 graphs ship without "
                        "the accuracy gate (pass --holdout DIR to gate them)", calib)
        else:
            held = split[1]
    if split is not None:
        paths = split[0]
    else:
        paths = _images(calib)
    if num_images is not None:
        paths = paths[:num_images]
    pre = image_preprocess(b)
    source = {"source": "folder", "path": str(calib), **({"held_out_for_gate": len(held)} if split is not None else {})}
    # ``graph``: the prepared FP32 graph with GPTQ-rounded conv weights (or the bundle's own with "nearest"): the
    # gate and the TensorRT placement must be written from it, else they would round the original weights again.
    section, graph = _quantize_bundle(b, _PathFeeds(paths, pre, source), method=method, targets=targets, exclude=(),
                                      num_samples=None, component="model", percentile=percentile, eval_samples=2,
                                      weight_rounding=weight_rounding, show_progress=show_progress)
    if not held:
        return section
    try:
        metric = detr_agreement(b, held, gt_top=gt_top, threads=threads, show_progress=show_progress)
    except CalibrationError as e:
        if holdout is not None:
            raise
        log.warning("INT8 graphs ship without the accuracy gate: %s", e)
        return section
    ranking, steps = keep_list(graph)
    section = gate_bundle(b, metric, sensitivity_feeds=(), latency_feed=pre(held[0]), max_drop=max_drop, steps=steps,
                          ranking=ranking, placement="ort", on_fail=on_fail, threads=threads, show_progress=show_progress,
                          holdout={"path": str(holdout if holdout is not None else calib), "images": len(held),
                                   "split": "given" if holdout is not None else "every 4th calibration image"},
                          fp32_graph=graph)
    if "trt" in targets:
        _follow_gate(b, graph, section)
    return section


def _images(folder: str | Path) -> list[Path]:
    from vkt.calibration.data import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder not found or not a folder: {str(root)!r}")
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths:
        raise CalibrationError(f"calibration folder {str(root)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def _follow_gate(b: Any, fp32: Any, section: dict[str, Any]) -> None:
    """Rewrite (or drop) the TensorRT placement to match the gate's choice for onnxruntime."""
    from vkt.calibration.api import QDQ_ROLE
    from vkt.calibration.qdq import place_trt
    from vkt.calibration.ranges import CalibrationTable
    from vkt.calibration.report import count_ops

    name = "model.int8.trt.onnx"
    placements = dict(section.get("placements", {}))
    chosen = section.get("gate", {}).get("chosen")
    if chosen is None:
        b.entries = [e for e in b.entries if not (e.role == QDQ_ROLE and e.path == name)]
        b.save()
        (b.root / name).unlink(missing_ok=True)
        placements.pop("trt", None)
    else:
        table = CalibrationTable.load(b.root / section["table"]["path"])
        kept = sorted(chosen["float_layers"])
        q = place_trt(fp32, table, kept)
        counts = count_ops(q)
        b.add_file(q.SerializeToString(), name, QDQ_ROLE, "model",
                   meta={"placement": "trt", "method": table.method, "table_sha256": table.sha256, "excluded": kept,
                         "gate": "same nodes in float as the onnxruntime placement's gate choice (not measured on TensorRT)",
                         "fused_int8_ops": counts.fused, "float_compute_ops": counts.float_compute})
        placements["trt"] = {**placements.get("trt", {}), "path": name, **counts.to_dict(), "gate_excluded": kept}
    section.update(placements=placements)
    b.update(calibration=section)
