"""`vkt eval`: ICDAR-2015-style precision / recall / hmean of a text-detection bundle on a labelled folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def eval_cmd(
    bundle: Path = typer.Argument(..., help="Text-detection or object-detection (DETR) bundle folder."),
    data: Path = typer.Option(None, "--data", help="Text detection: folder of images (or DIR/images) with ICDAR "
                              "gt_<image>.txt labels (or DIR/gt)."),
    coco: Path = typer.Option(None, "--coco", help="Object detection: COCO instances JSON (ground truth)."),
    images: Path = typer.Option(None, "--images", help="Object detection: folder holding the --coco file's images."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the full result (with per-image matches) to this JSON file."),
    backend: str = typer.Option("ort", help="Runtime backend: ort, ort-cuda, ort-trt, trt, ov (OpenVINO CPU), or auto "
                                "(the faster of ort and ov on this bundle, timed before the run; the choice and "
                                "timings go to the log and the result)."),
    precision: str = typer.Option("fp32", help="Bundle file to run: fp32, fp16 or int8."),
    threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime or OpenVINO (default: the library's)."),
    iou: float = typer.Option(0.5, help="IoU a detection needs to match a ground-truth region."),
) -> None:
    """Evaluate a detector: text -> {precision, recall, hmean, ...}; objects -> COCO {AP, AP50, AP75, ...}, as JSON."""
    from vkt.bundle import Bundle
    from vkt.cli.outputs import output_file
    from vkt.errors import InputError

    if out is not None:
        ins = [bundle, data, coco, images]
        output_file(out, "--out", ins)
        if coco is not None:  # COCO evaluation also writes <stem>.results.json beside it
            output_file(out.with_name(out.stem + ".results.json"), "--out (its COCO results file)", ins)
    b = Bundle.load(bundle)
    if b.task == "object-detection":
        from vkt.cli.detect import eval_coco_bundle

        if coco is None or images is None or data is not None:
            raise InputError("an object-detection bundle is evaluated with --coco ANN.json --images DIR (not --data)")
        result = eval_coco_bundle(b, coco, images, out, backend, precision, threads)
        typer.echo(json.dumps(result, indent=2))
        return
    if data is None or coco is not None or images is not None:
        raise InputError(f"a {b.task} bundle is evaluated with --data DIR (ICDAR-style labels); --coco/--images are for DETR")
    from vkt.eval.textdet import evaluate, load_icdar_dir, save_json
    from vkt.log import progress
    from vkt.runtime.textdet import TextDetector

    if not 0.0 < iou <= 1.0:
        raise InputError(f"--iou must be in (0, 1], got {iou}")
    pairs = load_icdar_dir(data)
    dets = []
    from vkt.runtime.choose import backend_report

    with TextDetector(bundle, backend=backend, precision=precision, threads=threads) as det:
        ran_on = backend_report(backend, det.runner)
        for path, _ in progress(pairs, "evaluating"):
            dets.append(det(path)[0].polygons)
    result = evaluate(dets, [g for _, g in pairs], names=[p.name for p, _ in pairs], iou_thresh=iou)
    result = {"bundle": str(bundle), "data": str(data), **ran_on, "model_precision": precision, **result}
    if out is not None:
        save_json(result, out)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "images"}, indent=2))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
