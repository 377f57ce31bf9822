"""Object-detection halves of `vkt run` and `vkt eval` (vkt.cli.run / vkt.cli.eval branch here on the bundle's task)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_detection(bundle: Any, inputs: Sequence[Path], out: Path, backend: str = "ort", precision: str = "fp32",
                  threads: int | None = None, batch: int | None = None, score_threshold: float | None = None,
                  no_draw: bool = False) -> dict[str, Any]:
    """DETR bundle on images/folders: <stem>.json (boxes in source pixels, labels, scores), <stem>.jpg (boxes drawn)
    and summary.json in ``out``. Unreadable images are skipped with a warning and listed; none readable raises."""
    from vkt.cli.images import run_pipeline_on_images
    from vkt.runtime.detection import Detector, draw_detections

    overrides = {"score_threshold": score_threshold} if score_threshold is not None else {}
    from vkt.runtime.choose import backend_report

    with Detector(bundle, backend=backend, precision=precision, threads=threads, max_batch=batch, **overrides) as det:
        return run_pipeline_on_images(det, inputs, out, None if no_draw else draw_detections,
                                      {"bundle": str(getattr(bundle, "root", bundle)), "task": "object-detection",
                                       **backend_report(backend, det.runner), "precision": precision}, "object")


def eval_coco_bundle(bundle: Any, annotations: Path, images: Path, out: Path | None = None, backend: str = "ort",
                     precision: str = "fp32", threads: int | None = None) -> dict[str, Any]:
    """COCO box AP of a DETR bundle: every image of ``annotations`` (instances JSON) read from ``images``.

    Class ids map to category ids in the bundle's label order when the labels match the category
    names, else one to one (DETR's COCO heads predict COCO ids); detections use score_threshold 0
    and top-k 100, as COCO's protocol expects ranked lists, not thresholded ones.
    """
    from vkt.errors import InputError
    from vkt.eval.coco import _read_json, coco_ap, to_coco_results, write_results
    from vkt.log import get_logger, progress
    from vkt.runtime.choose import backend_report
    from vkt.runtime.detection import Detector

    log = get_logger("cli.eval")
    gt = _read_json(annotations, "ground truth")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{str(annotations)!r} is not a COCO instances file: expected lists under 'images', "
                         "'annotations' and 'categories'")
    if not images.is_dir():
        raise InputError(f"image folder not found: {str(images)!r}")
    if not gt["images"]:
        raise InputError(f"{str(annotations)!r} lists no images")
    cats = sorted(gt["categories"], key=lambda c: int(c["id"]))
    dets, ids = [], []
    with Detector(bundle, backend=backend, precision=precision, threads=threads, score_threshold=0.0, top_k=100) as det:
        ran_on = backend_report(backend, det.runner)
        labels = list(det.params.labels)
        names = [str(c.get("name", c["id"])) for c in cats]
        mapping = [int(c["id"]) for c in cats] if labels and labels == names else None
        for info in progress(gt["images"], "evaluating"):
            path = images / str(info.get("file_name", ""))
            if not path.is_file():
                raise InputError(f"image {str(path)!r} (id {info.get('id')}) listed in {str(annotations)!r} is missing")
            dets.append(det(path)[0])
            ids.append(int(info["id"]))
    results = to_coco_results(dets, ids, category_ids=mapping)
    known = {int(c["id"]) for c in cats}
    stray = sorted({r["category_id"] for r in results} - known)
    if stray:   # e.g. the unused slots of DETR's 91-id COCO head: no ground truth can match them
        log.warning("dropping detections of class ids %s: not categories of %s", stray[:10], annotations)
        results = [r for r in results if r["category_id"] in known]
    metrics = coco_ap(gt, results)
    report = {"bundle": str(getattr(bundle, "root", bundle)), "annotations": str(annotations), "images": len(ids),
              **ran_on, "model_precision": precision, **metrics}
    if out is not None:
        from vkt.fsutil import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        write_results(results, out.with_name(out.stem + ".results.json"))
    return report
