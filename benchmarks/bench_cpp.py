"""cpp/'s vkt_cpp (C++, OpenVINO C++ API) vs vkt.runtime.TextDetector (Python, OpenVINO backend), end to end on photos.

Same bundle (PP-OCRv5 mobile det, FP32), same backend, inference threads and compiled-model settings (both sides'
properties read back from the compiled models, written in every row, a warning when they differ), one image
per call: decode the file, pre-process, infer, DB post-process. Both sides stay loaded for the whole run (vkt_cpp
as one `--bench-stdin` process: one compiled model, timed in process) and take turns call by call on the same
photo, the order flipping every pair (C++ then Python, Python then C++), with a short pause before each turn so
the other side's idle worker threads are asleep. Each pair gives a ratio Python / C++ of the two end-to-end times,
taken within a fraction of a second of each other, so a load swing that hits one call of a pair mostly hits the
other too; a row reports the median of those paired ratios with a distribution-free 95% confidence interval of
the median (order statistics) as its noise band, and the verdict that band gives ("C++ faster", "C++ slower",
"within noise"). The pre / infer / post split: C++ from the same calls (its stopwatch in process); Python from a
third call per pair with TextDetector's stages called one by one (its inference time against C++'s of the same
pair gives the inference-alone ratio and band). Load average before and after each
photo in every row. Needs a built vkt_cpp (see cpp/README.md):

    python benchmarks/bench_cpp.py --binary build/cpp/vkt_cpp --threads 2 --pairs 20 --json benchmarks/results/cpp_textdet.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

MODEL = "PP-OCRv5 mobile det"
PHOTOS = ("page.png", "text.png", "astronaut.png")
E2E = "one image per call: decode the file, pre-process, OpenVINO infer (f32), DB post-process; model compiled before"
SPLIT = ("decode_ms", "pre_ms", "infer_ms", "post_ms")
CPP, PY = "vkt_cpp", "vkt-python TextDetector"


# The compiled-model properties that decide CPU speed: the keys vkt_cpp prints (cpp/src/engine_openvino.cpp).
SETTINGS = ("PERFORMANCE_HINT", "EXECUTION_MODE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
            "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE", "TBB_PARTITIONER",
            "CPU_DENORMALS_OPTIMIZATION")


def ov_settings(compiled: Any) -> dict[str, str]:
    """A Python openvino CompiledModel's SETTINGS written as OpenVINO's C++ API writes them (ov::Any as text)."""
    out = {}
    for key in SETTINGS:
        try:
            v = compiled.get_property(key)
        except Exception:  # a device without that property
            continue
        if isinstance(v, bool):
            out[key] = "YES" if v else "NO"
        elif hasattr(v, "get_type_name"):  # an element type: f32
            out[key] = v.get_type_name()
        elif hasattr(v, "name") and not isinstance(v, (int, str)):  # an enum: PerformanceMode.LATENCY -> LATENCY
            out[key] = v.name
        else:
            out[key] = str(v)
    return out


class CppSide:
    """vkt_cpp --bench-stdin: one process, one compiled model (its settings read first); each call is one timed
    run in it (ms split)."""

    def __init__(self, binary: Path, bundle: Path, threads: int, env: dict[str, str] | None = None, precision: str = "fp32"):
        self.proc = subprocess.Popen([str(binary), "--bundle", str(bundle), "--threads", str(threads), "--precision", precision,
                                      "--bench-stdin"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1, env={**os.environ, **(env or {})})
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"vkt_cpp stopped: {self.proc.stderr.read()[-2000:]}")
        self.settings: dict[str, str] = json.loads(first)["settings"]

    def __call__(self, path: Path) -> dict[str, float]:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vkt_cpp stopped: {self.proc.stderr.read()[-2000:]}")
        return {k: v for k, v in json.loads(line).items() if k.endswith("_ms")}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class PySide:
    """TextDetector(path) end to end (the paired call), and its stages one by one (the split, a separate call)."""

    def __init__(self, det: Any):
        self.det = det

    def __call__(self, path: Path) -> dict[str, float]:
        t0 = time.perf_counter()
        self.det([path])
        return {"total_ms": (time.perf_counter() - t0) * 1e3}

    def split(self, path: Path) -> tuple[dict[str, float], list[int]]:
        from vkt.runtime.image import read_image
        from vkt.runtime.textdet import db_postprocess

        det = self.det
        t = [time.perf_counter()]
        img = read_image(path); t.append(time.perf_counter())
        x, plans = det.pre([img]); t.append(time.perf_counter())
        prob = det.runner.infer({det.input_name: x})[det.output_name]; t.append(time.perf_counter())
        db_postprocess(prob[0, det.params.channel], plans[0].src_size, det.params); t.append(time.perf_counter())
        return {k: (b - a) * 1e3 for k, a, b in zip(SPLIT, t[:-1], t[1:])}, list(x.shape)


def median_ci95(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% confidence interval of it (order statistics, normal approximation of
    the binomial); with fewer than 6 values the interval is the whole range."""
    v = sorted(values)
    n = len(v)
    k = max(0, math.floor((n - 1.96 * math.sqrt(n)) / 2)) if n >= 6 else 0
    return statistics.median(v), v[k], v[n - 1 - k]


def verdict(lo: float, hi: float) -> str:
    """Python / C++ ratio band -> words: above 1 means C++ took less time."""
    return "C++ faster" if lo > 1 else "C++ slower" if hi < 1 else "within noise"


def paired(sides: dict[str, Any], path: Path, pairs: int, gap: float, extra: Any = None) -> dict[str, list[dict]]:
    """`pairs` turns of every side on `path`, the order rotating each turn; `extra` (called after each turn of all
    sides, untimed against the others) collects side figures. Returns each side's per-call results."""
    names = list(sides)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(pairs):
        order = names[i % len(names):] + names[:i % len(names)]  # two sides: A B, B A, A B, ...
        for n in order:
            time.sleep(gap)
            out[n].append(sides[n](path))
        if extra is not None:
            time.sleep(gap)
            extra(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, required=True, help="the vkt_cpp executable (cmake --build of cpp/)")
    ap.add_argument("--bundle", type=Path, help="a PP-OCRv5 textdet bundle (default: imported into a temp folder)")
    ap.add_argument("--threads", type=int, default=2, help="inference threads on both sides (default 2)")
    ap.add_argument("--pairs", type=int, default=20, help="paired calls (C++, Python) per photo (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per side and photo first (default 2)")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds of pause before each timed call (default 0.05)")
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS), help=f"skimage photos (default {' '.join(PHOTOS)})")
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
        cpp = CppSide(args.binary, bundle, args.threads)
        try:
            with TextDetector(bundle, backend="ov", threads=args.threads) as det, RowWriter(args.json) as out:
                py = PySide(det)
                settings = {CPP: cpp.settings, PY: ov_settings(det.runner.compiled)}
                if settings[CPP] != settings[PY]:
                    print(f"warning: the two compiled models differ: {settings}", file=sys.stderr)
                for name in args.photos:
                    path = data / name
                    for _ in range(args.warmup):
                        cpp(path), py(path), py.split(path)
                    load = [round(os.getloadavg()[0], 2)]
                    py_split: list[dict] = []
                    shape: list[int] = []

                    def split(p: Path) -> None:
                        s, x = py.split(p)
                        py_split.append(s)
                        shape[:] = x

                    runs = paired({CPP: cpp, PY: py}, path, args.pairs, args.gap, split)
                    load.append(round(os.getloadavg()[0], 2))
                    ratios = [p["total_ms"] / c["total_ms"] for c, p in zip(runs[CPP], runs[PY])]
                    r50, lo, hi = median_ci95(ratios)
                    # inference alone: C++'s call vs the Python split call right after it in the same turn
                    i50, ilo, ihi = median_ci95([s["infer_ms"] / c["infer_ms"] for c, s in zip(runs[CPP], py_split)])
                    band = {"py_over_cpp_median": round(r50, 4), "py_over_cpp_ci95": [round(lo, 4), round(hi, 4)],
                            "py_over_cpp_iqr": [round(x, 4) for x in statistics.quantiles(ratios, n=4)[::2]],
                            "verdict": verdict(lo, hi), "infer_py_over_cpp_median": round(i50, 4),
                            "infer_py_over_cpp_ci95": [round(ilo, 4), round(ihi, 4)]}
                    figures = {CPP: runs[CPP], PY: [{**t, **s} for t, s in zip(runs[PY], py_split)]}
                    med = {}
                    for target, calls in figures.items():
                        totals = [c["total_ms"] for c in calls]
                        med[target] = {k: round(statistics.median(c[k] for c in calls), 3) for k in ("total_ms", *SPLIT)}
                        out.write(row("cpp", target, includes=E2E, model=MODEL, backend="openvino-cpu", precision="fp32",
                                      threads=args.threads, shape=shape, batch=1, n=len(calls), p50_ms=med[target]["total_ms"],
                                      p90_ms=round(statistics.quantiles(totals, n=10)[-1], 3), load_avg=load, image=name,
                                      pairs=args.pairs, order="alternating, pause %.2f s before each call" % args.gap,
                                      **{k: med[target][k] for k in SPLIT}, **band, ov_settings=settings[target],
                                      same_settings=settings[CPP] == settings[PY]))
                    c, p = med[CPP], med[PY]
                    print(f"{name} {'x'.join(map(str, shape))}: C++ {c['total_ms']:.1f} ms (decode {c['decode_ms']:.1f}, pre "
                          f"{c['pre_ms']:.1f}, infer {c['infer_ms']:.1f}, post {c['post_ms']:.1f}) | Python {p['total_ms']:.1f} ms "
                          f"(decode {p['decode_ms']:.1f}, pre {p['pre_ms']:.1f}, infer {p['infer_ms']:.1f}, post "
                          f"{p['post_ms']:.1f}) | Python/C++ paired median {r50:.3f} [95% CI {lo:.3f}, {hi:.3f}]: "
                          f"{band['verdict']}; infer alone {i50:.3f} [{ilo:.3f}, {ihi:.3f}] | load {load}", flush=True)
        finally:
            cpp.close()


if __name__ == "__main__":
    main()
