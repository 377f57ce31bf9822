"""Stable Diffusion with an INT8 UNet on onnxruntime CPU: speed and image error vs FP32, one run.

Components: bench_sd.py's random-weight pipelines (``--size small``: SD 1.5's layout at 1/10 of the
widths; ``sd15`` cannot be quantized yet: its 3.4 GB UNet keeps weights in external data, which
vkt's Q/DQ writer does not take). The bundle is copied to ``<work>/bundle-int8`` and calibrated there:

  calibration  UNet inputs at every step of FP32 generations of vkt.models.sd.int8.CALIB_PROMPTS
               (8 prompts x --calib-steps DDIM steps, guidance 7.5, batched: 2 images per feed), minmax
  error        PSNR of decoded uint8 images, INT8 UNet vs FP32, on held-out prompts and seeds
               (same seed for both), and SQNR of the UNet's noise prediction on their first-step inputs
  speed        interleaved after warm-up (vkt.bench.run_bench):
                 unet-fp32-fused   the UNet graph vkt runs on onnxruntime by default (*.ort.onnx)
                 unet-fp32-plain   the exported graph
                 unet-int8         the onnxruntime Q/DQ placement (uint8 activations, fused integer kernels)
               one call at batch 2 (guided B=1) at the image size's latents; then txt2img end to end,
               FP32 vs INT8 UNet, same prompt and seed.

    .venv/bin/python benchmarks/bench_sd_int8.py --size small --height 256 --steps 4 [--json rows.jsonl]

Rows: benchmarks/schema.py; the first row's "info" holds the calibration, PSNR and SQNR figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLUMNS", "150")

from benchmarks.schema import RowWriter, from_bench_row  # noqa: E402

HELD_OUT = ("a lighthouse on a cliff in a storm", "a plate of pasta with basil", "a dog running on the beach",
            "a medieval castle in the snow")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("small",), default="small")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the timed txt2img and the PSNR images")
    ap.add_argument("--calib-steps", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    from bench_sd import prepare

    from vkt.bench import BenchConfig, Case, Target, print_table, run_bench
    from vkt.bundle import Bundle
    from vkt.calibration import sqnr_db
    from vkt.models.sd.int8 import CALIB_PROMPTS, capture_unet_feeds, image_psnr, quantize_unet
    from vkt.runtime.ort import OrtRunner
    from vkt.runtime.txt2img import Txt2Img

    work = Path("/tmp/vkt-bench-sd") / args.size
    paths = prepare(args.size, work, args.height, 4)
    dst = work / "bundle-int8"
    if not (dst / "manifest.json").is_file():
        shutil.copytree(paths["bundle"], dst)
    b = Bundle.load(dst)
    info: dict[str, Any] = {}
    if not b.files("int8 qdq onnx", "unet"):
        t0 = time.perf_counter()
        feeds = capture_unet_feeds(b, CALIB_PROMPTS, steps=args.calib_steps, size=args.height, threads=args.threads)
        quantize_unet(b, feeds)
        info["calibration_s"] = time.perf_counter() - t0
        b = Bundle.load(dst)
    cal = b.manifest["calibration"]
    info["calibration"] = {"samples": cal["samples"], "method": cal["method"],
                           "ort_int8_ops": cal["placements"]["ort"]["int8"],
                           "ort_float_ops": cal["placements"]["ort"]["float"]}

    # error: images and UNet outputs on held-out prompts
    res = image_psnr(b, HELD_OUT, steps=args.steps, size=args.height, threads=args.threads)
    info["psnr_db"] = [round(v, 2) for v in res["psnr_db"]]
    info["mean_psnr_db"] = res["mean_psnr_db"]
    held = capture_unet_feeds(b, HELD_OUT, steps=1, size=args.height, seed=100, threads=args.threads)
    runners = {
        "unet-fp32-fused": OrtRunner(dst / b.entry("fp32 onnx", "unet", placement="ort").path, threads=args.threads),
        "unet-fp32-plain": OrtRunner(b.path("fp32 onnx", "unet"), threads=args.threads),
        "unet-int8": OrtRunner(dst / b.entry("int8 qdq onnx", "unet", placement="ort").path, threads=args.threads),
    }
    for r in runners.values():
        r.activate()
    ref = np.concatenate([runners["unet-fp32-plain"].infer(f)["noise_pred"].ravel() for f in held])
    got = np.concatenate([runners["unet-int8"].infer(f)["noise_pred"].ravel() for f in held])
    info["unet_sqnr_db"] = sqnr_db(ref, got)
    print(f"# INT8 vs FP32: image PSNR {info['psnr_db']} dB, UNet noise SQNR {info['unet_sqnr_db']:.1f} dB",
          file=sys.stderr, flush=True)

    # speed: UNet calls, then txt2img end to end
    feed = held[0]
    targets = [Target(n, (lambda f, _r=r: _r.infer(f)), includes=f"one UNet call, {n}") for n, r in runners.items()]
    pipes = {p: Txt2Img(b, scheduler="ddim", precision=p, threads=args.threads, cfg="batched", progress_bar=False).activate()
             for p in ("fp32", "int8")}
    for p, pipe in pipes.items():
        targets.append(Target(f"txt2img-{p}", (lambda f, _p=pipe: _p("a photo of an astronaut riding a horse on mars",
                                                                         height=args.height, width=args.height,
                                                                         steps=args.steps, seed=0)),
                              includes=f"txt2img end to end, {p} UNet, {args.steps} DDIM steps, guidance 7.5, B=1"))
    cases = [Case(f"B=1 (UNet batch 2) {args.height}x{args.height}", feed, 1)]
    groups = [run_bench(g, cases, BenchConfig(warmup=1, iters=args.iters), show_progress=False)
              for g in (targets[:3], targets[3:])]  # UNet calls interleaved together; pipelines together
    rows = groups[0] + groups[1]
    for r in rows:
        r.info = dict(r.info)
    rows[0].info.update(info)
    with RowWriter(args.json) as out:
        out.write_all(sd_int8_row(r, args.size, args.height, args.steps, args.threads) for r in rows)
    for g, what in zip(groups, ("one UNet call", "txt2img end to end")):
        print_table(g, title=f"SD INT8 UNet vs FP32 on onnxruntime CPU, {args.size} components, "
                             f"{args.height}x{args.height}: {what}")
    print(json.dumps({k: v for k, v in info.items()}, indent=1))


def sd_int8_row(r, size: str, height: int, steps: int, threads: int) -> dict:
    """Schema row of one target (``r``: vkt.bench.Row)."""
    return from_bench_row("sd_int8", r, model="SD 1.5 shapes at 1/10 width (random weights)", backend="ort-cpu",
                          precision="int8" if "int8" in r.target else "fp32", threads=threads, size=size, height=height,
                          steps=steps)


if __name__ == "__main__":
    main()
