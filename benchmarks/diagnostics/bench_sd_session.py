"""One SD graph in several onnxruntime sessions that differ by graph file or session options, timed call by call
interleaved in one process: the A/B for a graph rewrite or a session setting, on bench_sd.py's cached bundle.

    .venv/bin/python benchmarks/diagnostics/bench_sd_session.py --component unet --size 512 --reps 5 \\
        --variant spin=ort --variant nospin=ort:session.intra_op.allow_spinning=0
    .venv/bin/python benchmarks/diagnostics/bench_sd_session.py --component unet --size 256 --threads 1 \\
        --variant before=/tmp/unet.before.onnx --variant after=ort
    .venv/bin/python benchmarks/diagnostics/bench_sd_session.py --component unet --size 256 --batch 8 \\
        --variant batched=ort --variant two-calls=ort:calls=2

A variant is NAME=GRAPH[:KEY=VALUE,...]: GRAPH is "ort" (the bundle's .ort.onnx), "plain" (the exported graph) or a
path (a graph saved beside the bundle's weights); KEY=VALUE are session config entries, except ``threads=N`` (the
intra-op threads of that session) and ``calls=K`` (run the batch as K calls of batch/K, outputs concatenated: batched
guidance at --batch 2B against ``calls=2``, two calls at B). The first variant is the baseline of the ratios. Feeds: UNet at --batch
(default 2: one guided step at B=1), latents size/8, 77 tokens; VAE decoder at batch 1.
At most three SD 1.5 UNet sessions fit in ~12 GB. Prints JSON rows (benchmarks/schema.py), then a table: p50 and min wall seconds,
p50 CPU seconds (all threads), baseline/this, max |this - baseline| / max |baseline|, load average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--variant must be NAME=GRAPH[:KEY=VALUE,...], got {text!r}")
    graph, _, cfg = rest.partition(":")
    entries = {}
    for kv in filter(None, cfg.split(",")):
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"session option {kv!r} in --variant {text!r} is not KEY=VALUE")
        entries[k] = v
    return name, graph, entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vkt-bench-sd/sd15"), help="bench_sd.py's cache folder")
    ap.add_argument("--component", default="unet", choices=("unet", "vae_decoder"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    import onnxruntime as ort
    from bench_sd_calls import sd_feed, text_width, time_interleaved

    from vkt.bundle import Bundle

    b = Bundle.load(args.work / "bundle")
    graphs = {"ort": b.root / b.entry("fp32 onnx", args.component, placement="ort").path,
              "plain": b.path("fp32 onnx", args.component)}
    n = args.batch or (2 if args.component == "unet" else 1)
    feed = sd_feed(args.component, args.size, n, np.random.default_rng(0), text_width(b))
    fns, outs, meta = {}, {}, {}
    for text in args.variant:
        name, graph, entries = parse_variant(text)
        path = graphs.get(graph, Path(graph))
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(entries.pop("threads", args.threads))
        calls = int(entries.pop("calls", 1))
        if calls < 1 or n % calls:
            raise SystemExit(f"calls={calls} in --variant {text!r} must divide the batch {n}")
        for k, v in entries.items():
            so.add_session_config_entry(k, v)
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        parts = [{k: v[i * n // calls:(i + 1) * n // calls] for k, v in feed.items()} for i in range(calls)]
        fns[name] = lambda s=s, parts=parts: np.concatenate([s.run(None, f)[0] for f in parts])
        outs[name] = fns[name]()  # warm-up + parity
        meta[name] = {"graph": path.name, "threads": so.intra_op_num_threads, "calls": calls, "session_config": entries}
    base = next(iter(fns))
    wall, cpu, load0, load1 = time_interleaved(fns, args.reps)
    peak = _vmhwm_mib()
    ref = outs[base]
    rows = []
    for k in fns:
        p50 = float(np.median(wall[k]))
        rows.append(session_row(args.component, k, args.size, n, meta[k], wall[k], cpu[k], load0, load1,
                                base_over_this=round(float(np.median(wall[base])) / p50, 3),
                                base_over_this_min=round(min(wall[base]) / min(wall[k]), 3),
                                max_rel_vs_base=float(np.abs(outs[k] - ref).max() / np.abs(ref).max()),
                                peak_rss_mib=round(peak)))
    with RowWriter(args.json) as out:
        out.write_all(rows)
    print(f"\n{args.component} batch {n} at {args.size}x{args.size}, {args.reps} interleaved calls each, "
          f"load {load0[0]:.2f} -> {load1[0]:.2f}, peak RSS {peak:.0f} MiB")
    print(f"{'variant':16}{'p50 s':>9}{'min s':>9}{'cpu s':>9}{'base/this':>11}{'(min)':>8}{'rel diff':>10}")
    for r in rows:
        print(f"{r['variant']:16}{r['p50_s']:9.2f}{r['min_s']:9.2f}{r['cpu_p50_s']:9.2f}{r['base_over_this']:10.3f}x"
              f"{r['base_over_this_min']:7.3f}x{r['max_rel_vs_base']:10.1e}")


def session_row(component: str, variant: str, size: int, batch: int, meta: dict, wall: list[float], cpu: list[float],
                load0: tuple, load1: tuple, **figures) -> dict:
    """Schema row of one session variant's call times (wall and CPU seconds); ``meta``: graph, threads, calls, config."""
    return row("sd_session", variant, includes=f"one {component} call at batch {batch} ({meta['calls']} session run(s)), "
               "variants called in turn", model=f"SD 1.5 {component} (random weights)", backend="ort-cpu",
               precision="fp32", shape=f"{size}x{size} px", batch=batch, n=len(wall),
               p50_ms=round(float(np.median(wall)) * 1e3, 1), p90_ms=round(float(np.percentile(wall, 90)) * 1e3, 1),
               load_avg=[round(load0[0], 2), round(load1[0], 2)], component=component, size=size, variant=variant,
               **meta, reps=len(wall), p50_s=round(float(np.median(wall)), 3), min_s=round(min(wall), 3),
               cpu_p50_s=round(float(np.median(cpu)), 3), wall_s=[round(x, 3) for x in wall], **figures,
               load_avg_before=[round(x, 2) for x in load0], load_avg_after=[round(x, 2) for x in load1])


def _vmhwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
