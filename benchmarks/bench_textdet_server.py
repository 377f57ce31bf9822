"""PP-OCRv5 *server* text detector (random weights) on CPU: FP32 on onnxruntime and OpenVINO vs OpenVINO INT8.

Issue #18 point 6 asks OpenVINO INT8 to run >= 3x faster than the best FP32 at 2 threads on the server-shaped
detector. This script lets that be re-timed after each change:

    .venv/bin/python benchmarks/bench_textdet_server.py [--threads 2,1] [--iters 6] [--calib 8] [--work DIR]
        [--json benchmarks/results/textdet_server_ov.jsonl] [--extra NAME=GRAPH ...]

1. transformers' PPOCRV5ServerDetForObjectDetection (HGNetV2-L backbone, intra-class-block neck, 22 M
   parameters), random weights, seed 0 (vkt.models.textdet.loader.build_ppocrv5_server_det), exported to a
   textdet bundle by vkt.models.textdet.bundle.export_textdet_bundle (cached in --work).
2. INT8, one calibration on --calib scikit-image pictures pre-processed as the manifest says (short side 736):
   * vkt's placement for OpenVINO ("openvino") when this vkt's calibration writes one, else vkt's TensorRT
     placement ("trt": symmetric int8 Q/DQ on Conv inputs) run on OpenVINO, labelled as such;
   * NNCF PTQ (nncf.quantize, preset MIXED, the same feeds) on the FP32 graph, for OpenVINO.
3. Speed: vkt.bench.run_bench, targets interleaved in turns of 5 calls, on one 1x3x736x736 feed (page.png
   stretched to 736x736), per thread count. OpenVINO runners compute FP32 in f32 (not bf16) and the rows say
   what precision OpenVINO executed each conv in (its runtime graph), so an "INT8" row that fell back to
   float shows it.
4. Agreement: mean |prob INT8 - prob FP32| on the timed feed (random weights: no text to score hmean on).
Rows (benchmarks/schema.py) carry speedup_vs_best_fp32: the faster FP32 row at the same thread count / this row (p50),
speedup_min_vs_best_fp32 (the same with each target's fastest call) and speedup_cpu_vs_best_fp32 (median CPU seconds
per call over --cpu-iters more interleaved rounds: what survives a loaded machine, exact at 1 thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, from_bench_row, row  # noqa: E402

MODEL = "PP-OCRv5 server det (random weights)"
CALIB_PHOTOS = ("page.png", "text.png", "coffee.png", "astronaut.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png",
                "horse.png", "camera.png", "coins.png", "hubble_deep_field.jpg", "immunohistochemistry.png")


def photos(names: tuple[str, ...]) -> list[Path]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return [root / n for n in names if (root / n).is_file()]


def server_bundle(work: Path) -> Path:
    """The random-weight server detector as a textdet bundle (exported once per --work folder)."""
    dest = work / "ppocrv5_server_det.vkt"
    if not (dest / "manifest.json").is_file():
        import torch

        from vkt.models.textdet.bundle import export_textdet_bundle
        from vkt.models.textdet.loader import build_ppocrv5_server_det

        torch.manual_seed(0)
        t0 = time.perf_counter()
        export_textdet_bundle(build_ppocrv5_server_det(), dest, overwrite=True, name="ppocrv5-det-server-random")
        print(f"# exported {dest} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return dest


def calibration_feeds(bundle: Path, n: int) -> list[dict[str, np.ndarray]]:
    from vkt.bundle import Bundle
    from vkt.calibration.images import image_preprocess

    pre = image_preprocess(Bundle.load(bundle))
    return [pre(p) for p in photos(CALIB_PHOTOS)[:n]]


def timed_feed(bundle: Path, size: int) -> dict[str, np.ndarray]:
    import cv2

    from vkt.bundle import Bundle
    from vkt.runtime.image import Preprocessor, Resized, read_image

    b = Bundle.load(bundle)
    img = cv2.resize(read_image(photos(("page.png",))[0]), (size, size), interpolation=cv2.INTER_LINEAR)
    x = np.zeros((1, 3, size, size), np.float32)
    Preprocessor(b.preprocess).write(img, Resized((size, size), (size, size)), x[0])
    return {b.spec().input_names[0]: x}


def int8_graphs(bundle: Path, feeds: list, work: Path) -> dict[str, tuple[Path, str]]:
    """target name -> (graph for OpenVINO, what it is): vkt's placement (openvino if written, else trt) and NNCF's."""
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.config import TARGETS

    out: dict[str, tuple[Path, str]] = {}
    placement = "openvino" if "openvino" in TARGETS else "trt"
    b = Bundle.load(bundle)
    t0 = time.perf_counter()
    if placement not in {e.meta.get("placement") for e in b.files("int8 qdq onnx")}:  # cached in --work otherwise
        quantize_bundle(bundle, feeds, Int8Config(targets=(placement,)), eval_samples=0, show_progress=False)
        b = Bundle.load(bundle)
    out[f"ov-int8-vkt-{placement}-placement"] = (
        b.root / b.entry("int8 qdq onnx", placement=placement).path,
        f"vkt calibration (minmax), the {placement} Q/DQ placement, on OpenVINO (made in {time.perf_counter() - t0:.0f} s)")
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    xml = work / f"nncf_int8_{len(feeds)}.xml"
    if not xml.is_file():
        model = ov.Core().read_model(str(b.path("fp32 onnx")))
        name = b.spec().input_names[0]
        q = nncf.quantize(model, nncf.Dataset(feeds, lambda f: f[name]), preset=nncf.QuantizationPreset.MIXED,
                          subset_size=len(feeds))
        ov.save_model(q, str(xml))
    out["ov-int8-nncf-ptq"] = (xml, f"NNCF {nncf.__version__} PTQ (preset MIXED, {len(feeds)} feeds) on the FP32 graph, "
                               f"on OpenVINO (made in {time.perf_counter() - t0:.0f} s)")
    return out


def cpu_seconds(runners: dict, feed: dict, rounds: int) -> dict[str, float]:
    """Median CPU seconds (process_time: all of this process's threads) per call of each runner, in interleaved rounds.

    On a machine other processes load, wall time swings with their share of the cores while the CPU time a call
    spends tracks its own work (exactly at 1 thread; at 2 it also counts a worker's spinning)."""
    spent: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(rounds):
        for n, r in runners.items():
            c0 = time.process_time()
            r.infer(feed)
            spent[n].append(time.process_time() - c0)
    return {n: float(np.median(v)) if v else float("nan") for n, v in spent.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2,1", help="thread counts, comma-separated (default 2,1)")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=736, help="side of the square timed feed (multiple of 32)")
    ap.add_argument("--calib", type=int, default=8, help="calibration pictures")
    ap.add_argument("--work", type=Path, default=None, help="cache folder (bundle, INT8 graphs); default: a temporary one")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON lines)")
    ap.add_argument("--cpu-iters", type=int, default=3,
                    help="interleaved rounds of CPU-time measurement after the wall-clock timing (rows: cpu_s_median)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=GRAPH",
                    help="also time this INT8 graph (.onnx Q/DQ or OpenVINO .xml) on OpenVINO as target NAME (repeatable)")
    args = ap.parse_args()
    extra = {}
    for item in args.extra:
        name, _, path = item.partition("=")
        if not name or not Path(path).is_file():
            ap.error(f"--extra must be NAME=GRAPH with GRAPH an existing file, got {item!r}")
        extra[f"ov-int8-{name}"] = (Path(path), f"an extra graph given with --extra: {path}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
        assert threads and all(t >= 1 for t in threads)
    except (ValueError, AssertionError):
        ap.error(f"--threads must be positive integers separated by commas, got {args.threads!r}")
    if args.size % 32:
        ap.error(f"--size must be a multiple of 32, got {args.size}")

    from vkt.bench import BenchConfig, Case, Target, print_table, run_bench
    from vkt.bundle import Bundle
    from vkt.runtime import make_runner
    from vkt.runtime.openvino import OvRunner

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-textdet-server-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = server_bundle(work)
    b = Bundle.load(bundle)
    feeds = calibration_feeds(bundle, args.calib)
    graphs = {**int8_graphs(bundle, feeds, work), **extra}
    feed = timed_feed(bundle, args.size)
    out_name = b.spec().output_names[0]
    writer = RowWriter(args.json)
    for t in threads:
        runners = {"ort-fp32": (make_runner(b, "ort", threads=t), "vkt OrtRunner.infer, onnxruntime CPU, FP32"),
                   "ov-fp32": (make_runner(b, "ov", threads=t), "vkt OvRunner.infer, OpenVINO CPU, FP32 (f32 hint)")}
        for name, (path, what) in graphs.items():
            runners[name] = (OvRunner(path, spec=b.spec(), threads=t, name=name, precision="int8"), f"vkt OvRunner.infer, {what}")
        load_before = round(os.getloadavg()[0], 2)
        targets = [Target(n, r.infer, what, setup=r.activate) for n, (r, what) in runners.items()]
        rows = run_bench(targets, [Case(f"1x3x{args.size}x{args.size}", feed, 1)],
                         BenchConfig(warmup=args.warmup, iters=args.iters))
        load = [load_before, round(os.getloadavg()[0], 2)]
        print_table(rows, f"{MODEL}, {t} thread(s), load {load}")
        ref = runners["ort-fp32"][0].infer(feed)[out_name]
        cpu = cpu_seconds({n: r for n, (r, _) in runners.items()}, feed, args.cpu_iters)
        best_fp32 = min(r.p50_ms for r in rows if r.target.endswith("fp32"))
        best_min = min(r.min_ms for r in rows if r.target.endswith("fp32"))
        best_cpu = min(v for n, v in cpu.items() if n.endswith("fp32"))
        for r in rows:
            runner = runners[r.target][0]
            info = {"cpu_s_median": round(cpu[r.target], 4), "speedup_cpu_vs_best_fp32": round(best_cpu / cpu[r.target], 3),
                    "speedup_min_vs_best_fp32": round(best_min / r.min_ms, 3)}
            if isinstance(runner, OvRunner):
                info["executed"] = runner.executed_precisions()
            if "int8" in r.target:
                info["mean_abs_prob_vs_fp32"] = float(np.abs(runner.infer(feed)[out_name] - ref).mean())
            writer.write(from_bench_row("textdet_server", r, model=MODEL, backend="ort-cpu" if r.target.startswith("ort") else "ov-cpu",
                                        precision="int8" if "int8" in r.target else "fp32", threads=t, load_avg=load,
                                        speedup_vs_best_fp32=round(best_fp32 / r.p50_ms, 3), **info))
        for r, _ in runners.values():
            r.deactivate()
    writer.write(row("textdet_server", "run", includes="the INT8 graphs timed above: how each was made",
                     model=MODEL, int8={k: v[1] for k, v in graphs.items()}, calib_images=len(feeds)))
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
