"""cpp/'s vkt_cpp (C++, OpenVINO C++ API) vs vkt.runtime.TextDetector (Python, OpenVINO backend), end to end on photos.

Same bundle (PP-OCRv5 mobile det, FP32), same backend and inference threads, one image per call; each photo is
timed by both in turns (C++ block, then Python block) so a busy machine hits both alike. One timed call: decode the
file, pre-process, infer, DB post-process. The C++ side times itself in process (`vkt_cpp --bench R`: the median of
R runs after a warm-up, with its pre / infer / post split); the Python side is timed here, with the same split from
calling TextDetector's stages one by one. Each row's figures are the medians over --rounds blocks per side. Needs a built vkt_cpp (see cpp/README.md):

    python benchmarks/bench_cpp.py --binary build/cpp/vkt_cpp --threads 2 --reps 5 --rounds 5 --json results/cpp_textdet.jsonl
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

MODEL = "PP-OCRv5 mobile det"
PHOTOS = ("page.png", "text.png", "astronaut.png")
E2E = "one image per call: decode the file, pre-process, OpenVINO infer (f32), DB post-process; model compiled before"


def python_times(det, path: Path, reps: int) -> dict[str, float]:
    """Median ms of TextDetector end to end (det(path)), and of its stages called one by one."""
    from vkt.runtime.image import read_image
    from vkt.runtime.textdet import db_postprocess

    det([path])  # warm-up
    total, dec, pre, inf, post = [], [], [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        det([path])
        total.append(time.perf_counter() - t0)
        t = [time.perf_counter()]
        img = read_image(path); t.append(time.perf_counter())
        x, plans = det.pre([img]); t.append(time.perf_counter())
        prob = det.runner.infer({det.input_name: x})[det.output_name]; t.append(time.perf_counter())
        db_postprocess(prob[0, det.params.channel], plans[0].src_size, det.params); t.append(time.perf_counter())
        for acc, a, b in zip((dec, pre, inf, post), t[:-1], t[1:]):
            acc.append(b - a)
    med = lambda v: round(statistics.median(v) * 1e3, 3)  # noqa: E731
    return {"total_ms": med(total), "decode_ms": med(dec), "pre_ms": med(pre), "infer_ms": med(inf), "post_ms": med(post),
            "input": list(x.shape)}


def cpp_times(binary: Path, bundle: Path, path: Path, reps: int, threads: int) -> dict[str, float]:
    p = subprocess.run([str(binary), "--bundle", str(bundle), "--threads", str(threads), "--bench", str(reps), str(path)],
                       capture_output=True, text=True, timeout=600, check=True)
    r = json.loads(p.stdout.splitlines()[-1])["bench"][0]
    return {k: round(v, 3) for k, v in r.items() if k.endswith("_ms")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, required=True, help="the vkt_cpp executable (cmake --build of cpp/)")
    ap.add_argument("--bundle", type=Path, help="a PP-OCRv5 textdet bundle (default: imported into a temp folder)")
    ap.add_argument("--threads", type=int, default=2, help="inference threads on both sides (default 2)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per photo and side (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="C++ then Python blocks per photo, in turns; medians over them (default 3)")
    ap.add_argument("--json", type=Path, help="write schema rows (JSON lines) here")
    args = ap.parse_args()
    import skimage

    from vkt.runtime.textdet import TextDetector

    data = Path(skimage.__file__).parent / "data"
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from vkt.models.zoo import ppocrv5_det_mobile_bundle

            bundle = ppocrv5_det_mobile_bundle(Path(tmp) / "det.vkt")
        rows = []
        with TextDetector(bundle, backend="ov", threads=args.threads) as det, RowWriter(args.json) as out:
            for name in PHOTOS:
                path = data / name
                load = [round(os.getloadavg()[0], 2)]
                runs: dict[str, list[dict]] = {"vkt_cpp": [], "vkt-python TextDetector": []}
                for _ in range(args.rounds):  # C++ block, Python block, in turns: load swings hit both
                    runs["vkt_cpp"].append(cpp_times(args.binary, bundle, path, args.reps, args.threads))
                    runs["vkt-python TextDetector"].append(python_times(det, path, args.reps))
                load.append(round(os.getloadavg()[0], 2))
                shape = runs["vkt-python TextDetector"][0]["input"]
                med = {t: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0] if k.endswith("_ms")}
                       for t, rs in runs.items()}
                for target, r in med.items():
                    rows.append(row("cpp", target, includes=E2E, model=MODEL, backend="openvino-cpu", precision="fp32",
                                    threads=args.threads, shape=shape, batch=1, n=args.reps * args.rounds, p50_ms=r["total_ms"],
                                    load_avg=load, image=name, rounds=args.rounds,
                                    per_round_total_ms=[x["total_ms"] for x in runs[target]],
                                    **{k: v for k, v in r.items() if k != "total_ms"}))
                    out.write(rows[-1])
                c, py = med["vkt_cpp"], med["vkt-python TextDetector"]
                print(f"{name} {shape}: C++ {c['total_ms']:.1f} ms (decode {c['decode_ms']:.1f}, pre {c['pre_ms']:.1f}, infer "
                      f"{c['infer_ms']:.1f}, post {c['post_ms']:.1f}) | Python {py['total_ms']:.1f} ms (decode {py['decode_ms']:.1f}, "
                      f"pre {py['pre_ms']:.1f}, infer {py['infer_ms']:.1f}, post {py['post_ms']:.1f}) | Python/C++ "
                      f"{py['total_ms'] / c['total_ms']:.2f}x | load {load}")

if __name__ == "__main__":
    main()
