"""One SD UNet call and one VAE decode, interleaved in one process: vkt's onnxruntime graphs (``*.ort.onnx``) vs the
plain exported graphs vs diffusers' torch modules, on bench_sd.py's cached components.

Why beside bench_sd.py: the end-to-end ratio on a shared machine moves with the load (torch's OpenMP threads
spin at barriers while the other thread is descheduled, so its CPU seconds grow under contention). Per-call
figures at ``--threads 1`` have no barriers: they compare the work each implementation does, whatever the load.

    .venv/bin/python benchmarks/diagnostics/bench_sd_calls.py --threads 1 --size 512 --reps 3
    .venv/bin/python benchmarks/diagnostics/bench_sd_calls.py --threads 2 --size 512 --reps 3

UNet: batch 2 (guidance), latents size/8, 77 tokens; VAE decoder: batch 1. Prints JSON rows (benchmarks/schema.py),
then a table (p50 wall, p50 CPU seconds, ratio of diffusers-torch's p50 to each).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402


def sd_feed(component: str, size: int, batch: int, rng: np.random.Generator, hidden: int = 768) -> dict[str, np.ndarray]:
    """Random inputs of one SD UNet call (``batch`` rows; ``hidden``: the text encoder's width, SD 1.5: 768) or VAE
    decode at ``size`` x ``size`` pixels."""
    lat = size // 8
    if component == "unet":
        return {"sample": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32),
                "timestep": np.full((batch,), 500.0, np.float32),
                "encoder_hidden_states": rng.standard_normal((batch, 77, hidden), dtype=np.float32)}
    return {"latents": rng.standard_normal((batch, 4, lat, lat), dtype=np.float32)}


def time_interleaved(fns: dict, reps: int) -> tuple[dict[str, list[float]], dict[str, list[float]], tuple, tuple]:
    """Call each of ``fns`` in turn, ``reps`` rounds: (wall seconds, process CPU seconds per call, load average
    before, after)."""
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    load0 = os.getloadavg()
    for _ in range(reps):
        for n, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return wall, cpu, load0, os.getloadavg()


def call_row(component: str, impl: str, size: int, threads: int, wall: list[float], cpu: list[float], load0: tuple,
             load1: tuple, **figures) -> dict:
    """Schema row of one implementation's call times (wall and CPU seconds)."""
    batch = 2 if component == "unet" else 1
    return row("sd_calls", impl, includes=f"one {component} call at batch {batch} (feed in memory), implementations "
               "called in turn", model=f"SD 1.5 {component} (random weights)",
               backend="torch-cpu" if impl.startswith("diffusers") else "ort-cpu", precision="fp32", threads=threads,
               shape=f"{size}x{size} px", batch=batch, n=len(wall), p50_ms=round(float(np.median(wall)) * 1e3, 1),
               p90_ms=round(float(np.percentile(wall, 90)) * 1e3, 1), load_avg=[round(load0[0], 2), round(load1[0], 2)],
               component=component, impl=impl, size=size, reps=len(wall), p50_s=round(float(np.median(wall)), 3),
               min_s=round(min(wall), 3), cpu_p50_s=round(float(np.median(cpu)), 3), **figures,
               load_avg_before=[round(x, 2) for x in load0], load_avg_after=[round(x, 2) for x in load1])


def text_width(bundle) -> int:
    """The UNet's encoder_hidden_states width in ``bundle`` (768 for SD 1.5 shapes, less for bench_sd's small ones)."""
    return next(int(t.shape[-1]) for t in bundle.spec("unet").inputs if t.name == "encoder_hidden_states")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vkt-bench-sd/sd15"), help="bench_sd.py's cache folder")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--components", default="unet,vae_decoder")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from vkt.bundle import Bundle

    torch.set_num_threads(args.threads)
    b = Bundle.load(args.work / "bundle")
    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    rows = []
    for comp in args.components.split(","):
        if comp == "unet":
            feed = sd_feed(comp, args.size, 2, rng, text_width(b))
            m = UNet2DConditionModel.from_pretrained(str(args.work / "pipeline" / "unet")).eval()
            t_in = [torch.from_numpy(feed[k]) for k in ("sample", "timestep", "encoder_hidden_states")]
            torch_fn = lambda: m(*t_in, return_dict=False)[0]  # noqa: E731
        else:
            feed = sd_feed(comp, args.size, 1, rng)
            m = AutoencoderKL.from_pretrained(str(args.work / "pipeline" / "vae")).eval()
            z = torch.from_numpy(feed["latents"]) / m.config.scaling_factor  # the bundle's graph bakes 1/scaling_factor
            torch_fn = lambda: m.decode(z, return_dict=False)[0]  # noqa: E731
        graphs = {"vkt-ort-graph": b.root / b.entry("fp32 onnx", comp, placement="ort").path,
                  "plain-graph": b.path("fp32 onnx", comp)}
        fns = {}
        for name, p in graphs.items():
            s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            fns[name] = lambda s=s: s.run(None, feed)[0]
        fns["diffusers-torch"] = torch_fn
        with torch.no_grad():
            outs = {n: np.asarray(f()) for n, f in fns.items()}  # warm-up + parity
            ref = outs["diffusers-torch"]
            wall, cpu, load0, load1 = time_interleaved(fns, args.reps)
        tw, tc = float(np.median(wall["diffusers-torch"])), float(np.median(cpu["diffusers-torch"]))
        for n in fns:
            rows.append(call_row(comp, n, args.size, args.threads, wall[n], cpu[n], load0, load1,
                                 torch_over_this_wall=round(tw / float(np.median(wall[n])), 3),
                                 torch_over_this_cpu=round(tc / float(np.median(cpu[n])), 3),
                                 max_rel_vs_torch=float(np.abs(outs[n] - ref).max() / np.abs(ref).max())))
        del fns, m
    with RowWriter(args.json) as out:
        out.write_all(rows)
    print(f"\n{'component':12}{'impl':17}{'p50 s':>9}{'cpu s':>9}{'torch/this':>12}{'(cpu)':>8}{'rel err':>10}   load")
    for r in rows:
        print(f"{r['component']:12}{r['impl']:17}{r['p50_s']:9.2f}{r['cpu_p50_s']:9.2f}{r['torch_over_this_wall']:11.2f}x"
              f"{r['torch_over_this_cpu']:7.2f}x{r['max_rel_vs_torch']:10.1e}   {r['load_avg_before'][0]}->{r['load_avg_after'][0]}")


if __name__ == "__main__":
    main()
