"""Stable Diffusion txt2img end to end: vkt's torch-free Txt2Img vs diffusers' StableDiffusionPipeline (torch)
and diffusers' OnnxStableDiffusionPipeline (onnxruntime models, torch scheduler), same components, one run.

Components are random-weight models built here from configs (no download):
  --size sd15   SD 1.5's shapes: CLIP ViT-L/14 text encoder (12 layers, width 768), UNet (320/640/1280/1280,
                2 layers per block, cross-attention 768: 860 M parameters), VAE (128/256/512/512), CLIP's real
                49,408-token vocabulary (from open-clip-torch).
  --size small  the same layout at 1/10 of the widths, for a quick look.
Random weights do not change the work done per step (dense convs and attention over the same shapes).

Targets, interleaved call by call after warm-up (vkt.bench.run_bench), each one full generation of B
images for one prompt at guidance 7.5 with DDIM (the three pipelines share the bundle's schedule):
  vkt-ort          Txt2Img, classifier-free guidance batched: one UNet call at 2B per step
  vkt-ort-2calls   the same object with cfg="sequential": two UNet calls at B per step
  vkt-ort-auto     the same object with cfg="auto" (the default): times both on its first steps, keeps the faster
  diffusers-torch  StableDiffusionPipeline.from_pretrained(folder) in fp32, torch.no_grad
  diffusers-ort    OnnxStableDiffusionPipeline on plain graphs, as its users export them: the bundle's
                   unfused text_encoder.onnx / unet.onnx (torch.onnx.export, opset 17) and a VAE decoder
                   graph with diffusers' input name (latent_sample) and no baked 1/scaling_factor, in its own
                   sessions (onnxruntime's default options but the thread count)
vkt's bundle runs the onnxruntime-only graphs (``*.ort.onnx``, vkt.models.sd.optimize: MultiHeadAttention /
SkipLayerNormalization / Gelu fusions, sub-pixel up-sampler convs); they are (re)written in the cached bundle when
missing or older than the CPU rewrites.
Threads: torch.set_num_threads(T) and onnxruntime intra_op_num_threads = T for everything (default 2).
Figures include tokenization, text encoding, the denoising loop, VAE decoding and the conversion to
uint8 arrays (diffusers: output_type="np"; vkt: uint8 HxWx3); not model loading.

CPU seconds (process_time, all threads) are recorded beside wall time: on a shared, loaded machine
wall time swings with other processes while CPU time tracks the work done.

Per-stage breakdown: wall time spent inside the text encoder, UNet and VAE decoder calls (timers around
the module calls of each pipeline), averaged over the timed generations; "other" = total - stages
(scheduler maths, guidance, pre/post-processing, Python).

Peak memory (--memory, default on): each pipeline is loaded alone in a fresh subprocess that runs one
generation at batch 1; reported: peak resident set size (VmHWM in /proc/self/status, which counts
native allocations by torch and onnxruntime, unlike tracemalloc; not getrusage's ru_maxrss, which
Linux carries over fork + exec from the parent) and the increase over the RSS right after imports.
One process per pipeline because the high-water mark is per process.

    .venv/bin/python benchmarks/bench_sd.py --size sd15 --height 256 --steps 4 --batches 1,4 --iters 2
    .venv/bin/python benchmarks/bench_sd.py --size small --height 256 --steps 10

Prints JSON rows (benchmarks/schema.py; one per target and batch, stage breakdown and memory in "info"), then
tables; --json PATH also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLUMNS", "150")

from benchmarks.schema import RowWriter, from_bench_row  # noqa: E402  # rich's table width when stdout is not a terminal

PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
TARGETS = ("vkt-ort", "vkt-ort-2calls", "vkt-ort-auto", "diffusers-torch", "diffusers-ort")


# ---- components ---------------------------------------------------------------------------------

def sd15_configs(scale: int = 1) -> dict[str, dict[str, Any]]:
    """SD 1.5's UNet / VAE / CLIP text-encoder configs (runwayml/stable-diffusion-v1-5), widths / scale."""
    w = lambda c: max(32, c // scale // 32 * 32)  # noqa: E731  (multiples of the 32 norm groups)
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu",
                block_out_channels=tuple(w(c) for c in (320, 640, 1280, 1280)),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=w(768), attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
                center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                mid_block_scale_factor=1)
    vae = dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu",
               block_out_channels=tuple(w(c) for c in (128, 256, 512, 512)), norm_num_groups=32,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               scaling_factor=0.18215)
    text = dict(vocab_size=49408, hidden_size=w(768), intermediate_size=w(3072), num_attention_heads=12 if scale == 1 else 4,
                num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=w(768),
                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    sched = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": sched}


def prepare(size: str, work: Path, height: int, max_batch: int) -> dict[str, Path]:
    """Build + save the random pipeline, export vkt's bundle and diffusers' VAE-decoder graph (cached in ``work``)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from vkt.models.sd import SDProfile, export_sd
    from vkt.models.sd.tiny import write_real_clip_vocab

    folder, bundle, vae_onnx = work / "pipeline", work / "bundle", work / "diffusers_vae_decoder" / "model.onnx"
    if not (folder / "model_index.json").is_file():
        cfg = sd15_configs(1 if size == "sd15" else 10)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        tok = CLIPTokenizer.from_pretrained(str(write_real_clip_vocab(work / "vocab")), model_max_length=77)
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**cfg["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
            tokenizer=tok, unet=UNet2DConditionModel(**cfg["unet"]), scheduler=DDIMScheduler(**cfg["scheduler"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        n = sum(p.numel() for p in pipe.unet.parameters())
        pipe.save_pretrained(str(folder))
        print(f"# built {size} components (UNet {n / 1e6:.0f} M parameters) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        del pipe
    if not (bundle / "manifest.json").is_file():
        t0 = time.perf_counter()
        export_sd(folder, bundle, profile=SDProfile(max_batch=max_batch, min_size=min(height, 256), opt_size=height,
                                                    max_size=max(height, 512)), overwrite=True)
        print(f"# exported the vkt bundle in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    ort_graphs = {e.component: e.meta for e in _bundle_files(bundle, "fp32 onnx") if e.meta.get("placement") == "ort"}
    stale = [c for c in ("text_encoder", "unet", "vae_decoder")
             if c not in ort_graphs or (c != "text_encoder" and "rewrites" not in ort_graphs[c])]
    if stale:  # missing, or written before the CPU rewrites (vkt.models.sd.cpu_rewrites)
        from vkt.models.sd.optimize import add_ort_graphs

        t0 = time.perf_counter()
        done = add_ort_graphs(bundle, stale)
        print(f"# fused graphs for onnxruntime in {time.perf_counter() - t0:.0f} s: {done}", file=sys.stderr, flush=True)
    if not vae_onnx.is_file():
        vae = AutoencoderKL.from_pretrained(str(folder / "vae")).eval()

        class Decoder(torch.nn.Module):  # diffusers' convert_stable_diffusion_checkpoint_to_onnx.py graph: no scaling
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, latent_sample: Any) -> Any:
                return self.m.decode(latent_sample, return_dict=False)[0]

        vae_onnx.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(Decoder(vae), (torch.randn(1, 4, height // 8, height // 8),), str(vae_onnx),
                              input_names=["latent_sample"], output_names=["sample"], opset_version=17, dynamo=False,
                              dynamic_axes={"latent_sample": {0: "batch", 2: "height", 3: "width"},
                                            "sample": {0: "batch", 2: "image_height", 3: "image_width"}})
    return {"folder": folder, "bundle": bundle, "vae_onnx": vae_onnx}


def _bundle_files(bundle: Path, role: str) -> list[Any]:
    from vkt.bundle import Bundle

    return Bundle.load(bundle).files(role)


# ---- pipelines with stage timers ----------------------------------------------------------------------

class Stages:
    """Seconds spent in each stage during the current call."""

    def __init__(self) -> None:
        self.cur: dict[str, float] = {}

    def add(self, stage: str, dt: float) -> None:
        self.cur[stage] = self.cur.get(stage, 0.0) + dt

    def take(self) -> dict[str, float]:
        out, self.cur = self.cur, {}
        return out


class TimedSession:
    """An onnxruntime session whose run() adds its wall time to a stage."""

    def __init__(self, sess: Any, stages: Stages, stage: str) -> None:
        self.sess, self.stages, self.stage = sess, stages, stage

    def run(self, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.sess.run(*a, **k)
        finally:
            self.stages.add(self.stage, time.perf_counter() - t0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sess, name)


def _time_method(obj: Any, name: str, stages: Stages, stage: str) -> None:
    fn = getattr(obj, name)

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            stages.add(stage, time.perf_counter() - t0)

    setattr(obj, name, timed)


def load_pipelines(paths: dict[str, Path], threads: int, which: tuple[str, ...]) -> dict[str, Any]:
    """name -> (callable(batch) -> images, Stages)."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    vkt_pipe = None
    if {"vkt-ort", "vkt-ort-2calls", "vkt-ort-auto"} & set(which):
        from vkt.runtime.txt2img import Txt2Img

        vkt_pipe = Txt2Img(paths["bundle"], scheduler="ddim", threads=threads, progress_bar=False).activate()
    for name in which:
        st = Stages()
        if name in ("vkt-ort", "vkt-ort-2calls", "vkt-ort-auto"):
            mode = {"vkt-ort": "batched", "vkt-ort-2calls": "sequential", "vkt-ort-auto": "auto"}[name]

            def run(B: int, _m: str = mode, _st: Stages = st) -> Any:
                vkt_pipe.cfg_mode = _m
                out_ = vkt_pipe(PROMPT, negative_prompt=NEGATIVE, height=H, width=H, steps=STEPS, guidance_scale=GUIDANCE,
                                seed=0, num_images_per_prompt=B)
                t = out_.timings
                _st.add("text_encoder", t.text_encoder)
                _st.add("unet", float(sum(t.unet)))
                _st.add("vae", t.vae)
                return out_

            run.pipe = vkt_pipe  # type: ignore[attr-defined]  (cfg="auto" reports its choice)
            out[name] = (run, st)
        elif name == "diffusers-torch":
            from diffusers import DDIMScheduler, StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(str(paths["folder"]), safety_checker=None,
                                                           requires_safety_checker=False)
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            _time_method(pipe.text_encoder, "forward", st, "text_encoder")
            _time_method(pipe.unet, "forward", st, "unet")
            _time_method(pipe.vae, "decode", st, "vae")

            def run(B: int, _p: Any = pipe) -> Any:
                with torch.no_grad():
                    return _p(PROMPT, negative_prompt=NEGATIVE, height=H, width=H, num_inference_steps=STEPS,
                              guidance_scale=GUIDANCE, num_images_per_prompt=B, output_type="np",
                              generator=torch.Generator().manual_seed(0)).images

            out[name] = (run, st)
        elif name == "diffusers-ort":
            import onnxruntime as ort
            from diffusers import DDIMScheduler, OnnxRuntimeModel, OnnxStableDiffusionPipeline
            from transformers import CLIPTokenizer

            from vkt.bundle import Bundle

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            plain = Bundle.load(paths["bundle"])  # path(): the canonical, unfused graphs

            def session(p: Path, stage: str, _st: Stages = st) -> Any:
                return OnnxRuntimeModel(model=TimedSession(
                    ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]), _st, stage))

            pipe = OnnxStableDiffusionPipeline(
                vae_encoder=None,
                vae_decoder=session(paths["vae_onnx"], "vae"),
                text_encoder=session(plain.path("fp32 onnx", "text_encoder"), "text_encoder"),
                tokenizer=CLIPTokenizer.from_pretrained(str(paths["folder"] / "tokenizer")),
                unet=session(plain.path("fp32 onnx", "unet"), "unet"),
                scheduler=DDIMScheduler.from_pretrained(str(paths["folder"]), subfolder="scheduler"),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)

            def run(B: int, _p: Any = pipe) -> Any:
                return _p(PROMPT, negative_prompt=NEGATIVE, height=H, width=H, num_inference_steps=STEPS,
                          guidance_scale=GUIDANCE, num_images_per_prompt=B, output_type="np",
                          generator=np.random.RandomState(0)).images

            out[name] = (run, st)
    return out


def memory_child(paths: dict[str, Path], threads: int, name: str) -> None:
    """Subprocess body: load one pipeline, one generation at B=1; print peak and baseline RSS (MiB) as JSON."""
    import torch  # noqa: F401  (imports count towards the baseline, not the pipeline)
    import onnxruntime  # noqa: F401
    import diffusers  # noqa: F401

    import vkt.runtime.txt2img  # noqa: F401

    base = _rss_now_mib()
    pipes = load_pipelines(paths, threads, (name,))
    pipes[name][0](1)
    peak = _status_mib("VmHWM")
    print(json.dumps({"target": name, "peak_rss_mib": peak, "baseline_rss_mib": base, "delta_mib": peak - base}))


def _rss_now_mib() -> float:
    return _status_mib("VmRSS")


def _status_mib(key: str) -> float:
    """A /proc/self/status size in MiB. VmHWM (peak RSS of this address space) rather than getrusage's
    ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of a 10 GB parent reports >= 10 GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{key} not in /proc/self/status")


# ---- main -------------------------------------------------------------------------------------------

def main() -> None:
    global H, STEPS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("small", "sd15"), default="small")
    ap.add_argument("--height", type=int, default=256, help="image side in pixels (square)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps")
    ap.add_argument("--batches", default="1,4", help="images per call, comma-separated")
    ap.add_argument("--iters", type=int, default=3, help="timed generations per target and batch")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--work", type=Path, default=None, help="cache folder (default /tmp/vkt-bench-sd/<size>)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-pipeline peak-memory subprocesses")
    ap.add_argument("--memory-targets", default="vkt-ort,diffusers-torch,diffusers-ort",
                    help="pipelines whose peak memory is measured (vkt-ort-2calls loads the same as vkt-ort)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    H, STEPS = args.height, args.steps
    batches = [int(b) for b in args.batches.split(",")]
    which = tuple(t for t in args.targets.split(",") if t)
    work = args.work or Path("/tmp/vkt-bench-sd") / args.size
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(args.size, work, args.height, max(4, *batches))  # cached: one bundle serves B <= 4
    if args.memory_child:
        memory_child(paths, args.threads, args.memory_child)
        return

    from vkt.bench import BenchConfig, Case, Target, print_table, run_bench

    pipes = load_pipelines(paths, args.threads, which)
    stage_log: dict[tuple[str, int], list[dict[str, float]]] = {}

    def make(name: str) -> Target:
        fn, st = pipes[name]

        def run(feed: Any) -> None:
            B = int(feed["B"][0])
            st.take()
            c0, t0 = time.process_time(), time.perf_counter()
            fn(B)
            total = time.perf_counter() - t0
            s = st.take()
            s["other"] = total - sum(s.values())
            s["total"] = total
            s["cpu"] = time.process_time() - c0  # CPU seconds of all threads: steadier than wall on a shared machine
            stage_log.setdefault((name, B), []).append(s)

        return Target(name, run, includes=INCLUDES[name])

    cases = [Case(f"B={B} {H}x{H} {STEPS} steps", {"B": np.array([B])}, B) for B in batches]
    load_before = os.getloadavg()
    rows = run_bench([make(n) for n in which], cases, BenchConfig(warmup=args.warmup, iters=args.iters), show_progress=True)
    load_after = os.getloadavg()
    for r in rows:
        recs = stage_log.get((r.target, r.batch), [])[args.warmup:]
        r.info = dict(r.info)  # run_bench shares one info dict between a target's rows
        if recs:
            r.info["stages_s"] = {k: float(np.mean([x[k] for x in recs])) for k in recs[0]}
    for r in rows:
        pipe = getattr(pipes[r.target][0], "pipe", None)
        if r.target == "vkt-ort-auto" and pipe is not None:
            r.info["cfg_choice"] = pipe.cfg_choice
    if not args.no_memory:
        for name in [t for t in args.memory_targets.split(",") if t in which]:
            cmd = [sys.executable, __file__, "--size", args.size, "--height", str(H), "--steps", str(STEPS), "--threads",
                   str(args.threads), "--work", str(work), "--batches", args.batches, "--memory-child", name]
            res = subprocess.run(cmd, capture_output=True, text=True)
            mem = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {"error": res.stderr[-500:]}
            for r in rows:
                if r.target == name:
                    r.info["memory_b1"] = mem
    with RowWriter(args.json) as out:
        out.write_all(sd_row(r, args.size, args.threads, load_before, load_after) for r in rows)
    print_table(rows, title=f"txt2img end to end, {args.size} components, {H}x{H}, {STEPS} DDIM steps, guidance {GUIDANCE}")
    print("\nper-stage mean seconds per generation (timed calls):")
    print(f"{'target':16} {'B':>2} {'text_enc':>9} {'unet':>9} {'vae':>9} {'other':>8} {'total':>9} {'cpu s':>9} "
          f"{'peak RSS MiB (B=1)':>20}")
    for r in rows:
        s = r.info.get("stages_s", {})
        m = r.info.get("memory_b1", {})
        mem = f"{m['peak_rss_mib']:.0f} (+{m['delta_mib']:.0f})" if "peak_rss_mib" in m else "-"
        print(f"{r.target:16} {r.batch:>2} {s.get('text_encoder', 0):9.3f} {s.get('unet', 0):9.3f} {s.get('vae', 0):9.3f} "
              f"{s.get('other', 0):8.3f} {s.get('total', 0):9.3f} {s.get('cpu', 0):9.1f} {mem:>20}")


def sd_row(r, size: str, threads: int, load_before: tuple, load_after: tuple) -> dict:
    """Schema row of one target and batch (``r``: vkt.bench.Row of whole generations)."""
    return from_bench_row("sd", r, model=f"SD 1.5 shapes{'' if size == 'sd15' else ' at 1/10 width'} (random weights)",
                          backend="torch-cpu" if r.target == "diffusers-torch" else "ort-cpu", precision="fp32",
                          threads=threads, load_avg=[round(load_before[0], 2), round(load_after[0], 2)], size=size,
                          height=H, steps=STEPS, guidance=GUIDANCE, load_avg_before=[round(x, 2) for x in load_before],
                          load_avg_after=[round(x, 2) for x in load_after])


INCLUDES = {
    "vkt-ort": "vkt Txt2Img on onnxruntime CPU: tokenize, text encoder (uncond+cond in one call), UNet at 2B per step, "
               "numpy DDIM, VAE decoder, uint8 images",
    "vkt-ort-2calls": "the same, guidance as two UNet calls at B per step",
    "diffusers-torch": "diffusers StableDiffusionPipeline, torch fp32 eager, no_grad, output_type=np",
    "vkt-ort-auto": "the same, cfg='auto': batched or two calls, whichever its first steps measured faster",
    "diffusers-ort": "diffusers OnnxStableDiffusionPipeline on plain (unfused) graphs in its own sessions, VAE decoder "
                     "one image per call, torch DDIM scheduler, output_type=np",
}
H, STEPS = 256, 4

if __name__ == "__main__":
    main()
