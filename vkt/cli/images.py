"""The image loop `vkt run` shares between text and object detection: read, batch, detect, write, summarise."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"


def output_stems(files: Sequence[Path]) -> list[str]:
    """The name each image's outputs get (``<stem>.json``, ``<stem>.jpg``); the same stem from two folders
    becomes ``<stem>_2``, ``<stem>_3``, ... in input order."""
    used: set[str] = set()
    stems = []
    for f in files:
        stem, n = f.stem, 2
        while stem in used:
            stem, n = f"{f.stem}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def list_inputs_for(inputs: Sequence[Path], out: Path, draw: bool) -> list[Path]:
    """The image files of ``inputs`` (files and folders), after checking that no file this loop writes in
    ``out`` (``<stem>.json``, ``<stem>.jpg`` with ``draw``, ``summary.json``) is one of them: InputError
    naming both, before any model is loaded. (An output folder that *is* an input folder is refused
    earlier, by vkt.cli.outputs.)"""
    from vkt.errors import InputError
    from vkt.log import get_logger
    from vkt.runtime.image import list_images

    files = list_images(inputs, warn=get_logger("cli.run").warning)
    real = {os.path.realpath(f): f for f in files}
    for stem in output_stems(files):
        for name in (f"{stem}.json", *((f"{stem}.jpg",) if draw else ()), SUMMARY):
            hit = real.get(os.path.realpath(out / name))
            if hit is not None:
                raise InputError(f"--out {str(out)!r} would write {name!r} over the input image {str(hit)!r}; "
                                 "choose another output folder")
    return files


def run_pipeline_on_images(det: Any, inputs: Sequence[Path], out: Path, draw: Callable[[Any, Any], Any] | None,
                           summary: dict[str, Any], noun: str) -> dict[str, Any]:
    """Run an image pipeline (``TextDetector`` or ``Detector``, already active) over image files and folders.

    Writes ``out/<stem>.json`` per image (``{"image": path, **detections.to_dict()}``), ``out/<stem>.jpg`` when
    ``draw(img, detections)`` is given, and ``out/summary.json`` (``summary`` plus images, detections, failed,
    seconds, results), each atomically. Images are read and sent in chunks of ``det.max_batch``. An image that
    cannot be read, or that the model refuses (e.g. beyond a static profile), is skipped with a warning and
    listed under ``failed``; the rest of its chunk still runs. Raises InputError when no image could be used.
    ``noun`` names what is counted in the one-line report ("text region", "object").
    """
    import cv2
    import typer

    from vkt.errors import InputError, VktError
    from vkt.fsutil import atomic_write_bytes, atomic_write_text
    from vkt.log import get_logger, progress
    from vkt.runtime.image import list_images, read_image

    log = get_logger("cli.run")
    files = list_images(inputs, warn=log.warning)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    named = list(zip(files, output_stems(files)))  # stems fixed up front: list_inputs_for checked these names

    def skip(f: Path, e: VktError) -> None:
        log.warning("skipping %s: %s", f, e)
        failed.append({"image": str(f), "error": str(e)})

    step = det.max_batch
    for k in progress(range(0, len(files), step), "detecting", total=-(-len(files) // step)):
        # 1. read the chunk; unreadable files are skipped
        chunk, arrays = [], []
        for f, stem in named[k:k + step]:
            try:
                arrays.append(read_image(f))
                chunk.append((f, stem))
            except VktError as e:
                skip(f, e)
        if not arrays:
            continue
        # 2. detect; when the chunk fails, one image at a time to find which one
        try:
            found: list[Any] = list(det(arrays))
        except VktError as e:
            if len(arrays) == 1:
                skip(chunk[0][0], e)
                continue
            found = []
            for (f, _), img in zip(chunk, arrays):
                try:
                    found.append(det([img])[0])
                except VktError as e1:
                    skip(f, e1)
                    found.append(None)
        # 3. write <stem>.json (+ <stem>.jpg); the same name from two folders keeps both
        for (f, stem), img, d in zip(chunk, arrays, found):
            if d is None:
                continue
            atomic_write_text(out / f"{stem}.json", json.dumps({"image": str(f), **d.to_dict()}, indent=1) + "\n")
            row = {"image": str(f), "json": f"{stem}.json", "detections": len(d)}
            if draw is not None:
                ok, buf = cv2.imencode(".jpg", draw(img, d))
                if ok:
                    atomic_write_bytes(out / f"{stem}.jpg", buf.tobytes())
                    row["annotated"] = f"{stem}.jpg"
            rows.append(row)
    result = {**summary, "images": len(rows), "detections": sum(r["detections"] for r in rows), "failed": failed,
              "seconds": round(time.perf_counter() - t0, 3), "results": rows}
    atomic_write_text(out / SUMMARY, json.dumps(result, indent=1) + "\n")
    if not rows:
        raise InputError(f"none of the {len(files)} input image(s) could be used: {failed[0]['error']}")
    typer.echo(f"{len(rows)} image(s), {result['detections']} {noun}(s) -> {out}"
               + (f" ({len(failed)} skipped)" if failed else ""))
    return result


__all__ = ["list_inputs_for", "output_stems", "run_pipeline_on_images"]
