"""`vkt run`: run a text-detection bundle on images or folders; write annotated images, JSON and a summary."""

from __future__ import annotations

import json
import time
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

    b = Bundle.load(bundle)
    if b.task == "object-detection":
        from vkt.cli.detect import run_detection

        run_detection(b, images, out, backend, precision, threads, batch, score_threshold, no_draw)
        return
    import cv2

    from vkt.errors import InputError, VktError
    from vkt.log import get_logger, progress
    from vkt.runtime.image import list_images, read_image
    from vkt.runtime.textdet import TextDetector

    log = get_logger("cli.run")
    files = list_images(images, warn=log.warning)
    overrides = {k: v for k, v in (("box_thresh", box_thresh), ("thresh", thresh)) if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, failed, used = [], [], set()
    with TextDetector(bundle, backend=backend, precision=precision, threads=threads, max_batch=batch, **overrides) as det:
        step = det.max_batch
        for k in progress(range(0, len(files), step), "detecting", total=-(-len(files) // step)):
            chunk, arrays = [], []
            for f in files[k:k + step]:
                try:
                    arrays.append(read_image(f))
                    chunk.append(f)
                except VktError as e:
                    log.warning("skipping %s", e)
                    failed.append({"image": str(f), "error": str(e)})
            if not arrays:
                continue
            for f, img, d in zip(chunk, arrays, det(arrays)):
                stem = f.stem
                n = 2
                while stem in used:  # same name in two folders: keep both
                    stem, n = f"{f.stem}_{n}", n + 1
                used.add(stem)
                record = {"image": str(f), **d.to_dict()}
                (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
                row = {"image": str(f), "json": f"{stem}.json", "detections": len(d)}
                if not no_draw:
                    cv2.imwrite(str(out / f"{stem}.jpg"), draw_detections(img, d))
                    row["annotated"] = f"{stem}.jpg"
                rows.append(row)
    summary = {"bundle": str(bundle), "backend": backend, "precision": precision, "images": len(rows),
               "detections": sum(r["detections"] for r in rows), "failed": failed,
               "seconds": round(time.perf_counter() - t0, 3), "results": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if not rows:
        raise InputError(f"none of the {len(files)} input image(s) could be read: {failed[0]['error']}")
    typer.echo(f"{len(rows)} image(s), {summary['detections']} text region(s) -> {out}"
               + (f" ({len(failed)} skipped)" if failed else ""))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
