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
    backend: str = typer.Option("ort", help="Runtime backend: ort, ort-cuda, ort-trt, trt."),
    precision: str = typer.Option("fp32", help="Bundle file to run: fp32, fp16 or int8."),
    threads: int = typer.Option(None, help="onnxruntime intra-op threads (default: one per physical core)."),
    batch: int = typer.Option(None, help="Images per model call (default: the profile's max batch)."),
    box_thresh: float = typer.Option(None, help="Override the bundle's DB box_thresh."),
    thresh: float = typer.Option(None, help="Override the bundle's DB pixel threshold."),
    no_draw: bool = typer.Option(False, "--no-draw", help="Write JSON only, no annotated images."),
    score_threshold: float = typer.Option(None, "--score-threshold", help="Object detection: override the bundle's "
                                          "score_threshold."),
) -> None:
    """Detect text or objects in images; unreadable images are skipped with a warning and listed in summary.json."""
    from vkt.bundle import Bundle
    from vkt.cli.images import list_inputs_for
    from vkt.cli.outputs import output_folder

    # --out may hold the inputs (e.g. "."), but may not be an input folder nor put a file on an input image
    output_folder(out, "--out", [bundle, *images], container=True)
    images = list_inputs_for(images, out, draw=not no_draw)
    b = Bundle.load(bundle)
    if b.task == "object-detection":
        from vkt.cli.detect import run_detection

        run_detection(b, images, out, backend, precision, threads, batch, score_threshold, no_draw)
        return
    from vkt.cli.images import run_pipeline_on_images
    from vkt.runtime.textdet import TextDetector

    overrides = {k: v for k, v in (("box_thresh", box_thresh), ("thresh", thresh)) if v is not None}
    with TextDetector(bundle, backend=backend, precision=precision, threads=threads, max_batch=batch, **overrides) as det:
        run_pipeline_on_images(det, images, out, None if no_draw else draw_detections,
                               {"bundle": str(bundle), "backend": backend, "precision": precision}, "text region")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
