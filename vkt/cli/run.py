"""`vkt run`: run a text-detection bundle on images or folders; write annotated images, JSON and a summary."""

from __future__ import annotations

from pathlib import Path

import typer


def draw_detections(img, det):  # type: ignore[no-untyped-def]
    """BGR uint8 [H, W, 3] copy of ``img`` with each polygon outlined in green and its score written above it."""
    import cv2
    import numpy as np

    out = img.copy()
    thick = max(1, round(max(img.shape[:2]) / 600))
    for poly, score in zip(det.polygons, det.scores):
        pts = np.rint(poly).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], isClosed=True, color=(0, 200, 0), thickness=thick, lineType=cv2.LINE_AA)
        x, y = int(pts[:, 0, 0].min()), int(pts[:, 0, 1].min())
        cv2.putText(out, f"{score:.2f}", (x, max(y - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, (0, 0, 255),
                    thick, cv2.LINE_AA)
    return out


def run(
    bundle: Path = typer.Argument(..., help="Text-detection or object-detection (DETR) bundle folder."),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders of images (not recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for <name>.jpg (annotated), <name>.json and summary.json."),
    backend: str = typer.Option("ort", help="Runtime backend: ort, ort-cuda, ort-trt, trt, ov (OpenVINO CPU), or auto "
                                "(the faster of ort and ov on this bundle, timed before the run; the choice and "
                                "timings go to the log and summary.json)."),
    precision: str = typer.Option("fp32", help="Bundle file to run: fp32, fp16 or int8."),
    threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime or OpenVINO (default: the library's; "
                                "onnxruntime: one per physical core)."),
    batch: int = typer.Option(None, min=1, help="Images per model call (default: the profile's max batch)."),
    box_thresh: float = typer.Option(None, help="Override the bundle's DB box_thresh."),
    thresh: float = typer.Option(None, help="Override the bundle's DB pixel threshold."),
    unclip_ratio: float = typer.Option(None, "--unclip-ratio", help="Override the bundle's DB unclip_ratio (> 0)."),
    max_candidates: int = typer.Option(None, "--max-candidates", help="Override the bundle's DB max_candidates."),
    limit_side_len: int = typer.Option(None, "--limit-side-len", help="Override the bundle's resize limit_side_len."),
    limit_type: str = typer.Option(None, "--limit-type", help="Override the bundle's resize limit_type: min | max."),
    max_side: int = typer.Option(None, "--max-side", help="Override the bundle's long-side cap in pixels (the "
                                 "profile's max height/width still caps it; a capped image is noted in its JSON)."),
    mean: str = typer.Option(None, "--mean", help="Override the bundle's per-channel mean, e.g. 0.485,0.456,0.406."),
    std: str = typer.Option(None, "--std", help="Override the bundle's per-channel std, e.g. 0.229,0.224,0.225."),
    no_draw: bool = typer.Option(False, "--no-draw", help="Write JSON only, no annotated images."),
    score_threshold: float = typer.Option(None, "--score-threshold", help="Object detection: override the bundle's "
                                          "score_threshold."),
) -> None:
    """Detect text or objects in images; unreadable images are skipped with a warning and listed in summary.json."""
    from vkt.bundle import Bundle
    from vkt.cli.images import list_inputs_for
    from vkt.cli.outputs import output_folder
    from vkt.cli.textdet_options import flags_of, textdet_overrides
    from vkt.errors import InputError

    # --out may hold the inputs (e.g. "."), but may not be an input folder nor put a file on an input image
    output_folder(out, "--out", [bundle, *images], container=True)
    images = list_inputs_for(images, out, draw=not no_draw)

    overrides = textdet_overrides(box_thresh=box_thresh, thresh=thresh, unclip_ratio=unclip_ratio,
                                  max_candidates=max_candidates, limit_side_len=limit_side_len, limit_type=limit_type,
                                  max_side_len=max_side, mean=mean, std=std)
    b = Bundle.load(bundle)
    if b.task == "object-detection" and overrides:
        raise InputError(f"{flags_of(overrides)} only apply to text-detection bundles; {str(bundle)!r} is for "
                         "object detection (see --score-threshold)")
    if b.task != "object-detection" and score_threshold is not None:
        raise InputError(f"--score-threshold is for object-detection bundles; {str(bundle)!r} is {b.task!r} "
                         "(use --box-thresh / --thresh)")
    if b.task == "object-detection":
        from vkt.cli.detect import run_detection

        run_detection(b, images, out, backend, precision, threads, batch, score_threshold, no_draw)
        return
    from vkt.cli.images import run_pipeline_on_images
    from vkt.runtime.textdet import TextDetector

    from vkt.runtime.choose import backend_report

    with TextDetector(bundle, backend=backend, precision=precision, threads=threads, max_batch=batch, **overrides) as det:
        run_pipeline_on_images(det, images, out, None if no_draw else draw_detections,
                               {"bundle": str(bundle), **backend_report(backend, det.runner), "precision": precision},
                               "text region")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
