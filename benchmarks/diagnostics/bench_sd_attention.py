"""SD 1.5's self-attention on CPU, one formulation against another, interleaved: onnxruntime's fused
MultiHeadAttention (what vkt.models.sd.optimize puts in the .ort.onnx UNet: its CPU kernel is flash attention) vs
the alternatives that have CPU kernels — MatMul-Softmax-MatMul as an unfused export writes it, the same with the
queries split into k static chunks (smaller probability blocks), ONNX's own Attention op (opset 23), and
com.microsoft Attention with packed QKV weights (layer level: projections included, against MatMul + Split +
MultiHeadAttention) — and torch's scaled_dot_product_attention.

Shapes (--shape): unet64 = 64x64 latents (512 px): 4096 tokens, 8 heads x 40, batch 2 (guidance);
unet32 = 32x32 latents: 1024 tokens, 8 heads x 80; vae64 = the VAE decoder's mid-block at 512 px: 4096 tokens,
one head x 512, batch 1.

    .venv/bin/python benchmarks/diagnostics/bench_sd_attention.py --shape unet64 [--reps 5] [--threads 2] [--chunks 4,16]

Inputs are q, k, v [B, S, E] (already projected) and the output is [B, S, E], so every formulation pays for its
own head transposes. Prints one JSON row per implementation (benchmarks/schema.py; p50 / min ms, max |diff| vs
MultiHeadAttention), then a table.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402

SHAPES = {"unet64": (2, 4096, 8, 40), "unet32": (2, 1024, 8, 80), "vae64": (1, 4096, 1, 512)}
F = TensorProto.FLOAT


def model(nodes, inputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info("o", F, None)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8 if opset < 21 else 10
    return m


def plain(B, S, H, D, chunks):
    """softmax(q k^T / sqrt(D)) v per head with ONNX ops; queries split into ``chunks`` static blocks."""
    c = numpy_helper.from_array
    inits = [c(np.array([B, S, H, D], np.int64), "shape4"), c(np.array([B, S, H * D], np.int64), "shape3"),
             c(np.array(D ** -0.5, np.float32), "scale")]
    n = [helper.make_node("Mul", ["q", "scale"], ["qs"]),
         helper.make_node("Reshape", ["qs", "shape4"], ["q4"]), helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
         helper.make_node("Reshape", ["k", "shape4"], ["k4"]), helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
         helper.make_node("Reshape", ["v", "shape4"], ["v4"]), helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3])]
    if chunks == 1:
        n += [helper.make_node("MatMul", ["qh", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["oh"])]
    else:
        inits.append(c(np.full(chunks, S // chunks, np.int64), "split"))
        n.append(helper.make_node("Split", ["qh", "split"], [f"qc{i}" for i in range(chunks)], axis=2))
        for i in range(chunks):
            n += [helper.make_node("MatMul", [f"qc{i}", "kt"], [f"s{i}"]),
                  helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
                  helper.make_node("MatMul", [f"p{i}", "vh"], [f"oc{i}"])]
        n.append(helper.make_node("Concat", [f"oc{i}" for i in range(chunks)], ["oh"], axis=2))
    n += [helper.make_node("Transpose", ["oh"], ["ot"], perm=[0, 2, 1, 3]), helper.make_node("Reshape", ["ot", "shape3"], ["o"])]
    return model(n, [(x, [B, S, H * D]) for x in "qkv"], inits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="unet64")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", default="4,16", help="query chunk counts of the chunked MatMul-Softmax-MatMul")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    B, S, H, D = SHAPES[args.shape]
    E = H * D
    qkv = [(x, [B, S, E]) for x in "qkv"]
    graphs = {"ort-mha": model([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                                                 num_heads=H)], qkv),
              "onnx-attention-23": model([helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=H, kv_num_heads=H)],
                                         qkv, opset=23),
              "ort-plain": plain(B, S, H, D, 1)}
    for k in (int(x) for x in args.chunks.split(",") if x):
        graphs[f"ort-plain-chunks{k}"] = plain(B, S, H, D, k)
    rng = np.random.default_rng(0)
    # layer level: x -> packed QKV projection -> attention, as com.microsoft Attention and as MatMul + Split + MHA
    w = numpy_helper.from_array((rng.standard_normal((E, 3 * E)) * E ** -0.5).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.zeros(3 * E, np.float32), "zero")  # onnxruntime 1.31's CPU kernel crashes without a bias
    layer = {"L-ort-attention-packed": model([helper.make_node("Attention", ["x", "w", "zero"], ["o"], domain="com.microsoft",
                                                               num_heads=H)], [("x", [B, S, E])], [w, zero]),
             "L-matmul-split-mha": model([helper.make_node("MatMul", ["x", "w"], ["p"]),
                                          helper.make_node("Split", ["p", "sp"], ["q", "k", "v"], axis=-1),
                                          helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"],
                                                           domain="com.microsoft", num_heads=H)],
                                         [("x", [B, S, E])], [w, numpy_helper.from_array(np.array([E] * 3, np.int64), "sp")])}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    q, k, v = (rng.standard_normal((B, S, E), dtype=np.float32) for _ in range(3))
    x = (rng.standard_normal((B, S, E)) * 0.5).astype(np.float32)
    fns = {}
    for name, m in {**graphs, **layer}.items():
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {"x": x} if name.startswith("L-") else {"q": q, "k": k, "v": v}
        fns[name] = lambda s=s, feed=feed: s.run(None, feed)[0]
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        tq, tk, tv = (torch.from_numpy(a.reshape(B, S, H, D).transpose(0, 2, 1, 3).copy()) for a in (q, k, v))
        fns["torch-sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).permute(0, 2, 1, 3) \
            .reshape(B, S, E).numpy()
    outs = {n: np.asarray(f()) for n, f in fns.items()}  # warm-up + parity
    ts = {n: [] for n in fns}
    load0 = os.getloadavg()[0]
    for _ in range(args.reps):
        for n, f in fns.items():
            t = time.perf_counter()
            f()
            ts[n].append(time.perf_counter() - t)
    load1 = os.getloadavg()[0]
    base = float(np.median(ts["ort-mha"]))
    rows = []
    for n in fns:
        ref = outs["L-ort-attention-packed" if n.startswith("L-") else "ort-mha"]
        p50 = float(np.median(ts[n]))
        rows.append(attention_row(n, args.shape, (B, S, H, D), args.threads, ts[n], [round(load0, 2), round(load1, 2)],
                                  mha_over_this=round(base / p50, 3) if not n.startswith("L-") else None,
                                  max_abs_diff=float(np.abs(outs[n] - ref).max())))
    with RowWriter(args.json) as out:
        out.write_all(rows)
    print(f"\n{args.shape} {[B, S, H, D]}, {args.threads} threads, load {load0:.2f} -> {load1:.2f}")
    print(f"{'impl':26}{'p50 ms':>10}{'min ms':>10}{'mha/this':>10}{'max diff':>10}")
    for r in rows:
        ratio = f"{r['mha_over_this']:9.2f}x" if r["mha_over_this"] else f"{'':10}"
        print(f"{r['impl']:26}{r['p50_ms']:10.1f}{r['min_ms']:10.1f}{ratio}{r['max_abs_diff']:10.1e}")


def attention_row(impl: str, shape: str, bshd: tuple, threads: int, times_s: list[float], load: list[float],
                  **figures) -> dict:
    """Schema row of one formulation's call times (s)."""
    includes = ("one call: x -> packed QKV projection -> attention" if impl.startswith("L-") else
                "one call: attention over projected q, k, v [B, S, E] -> [B, S, E], head transposes included")
    return row("sd_attention", impl, includes=includes, model="self-attention", threads=threads,
               backend="torch-cpu" if impl.startswith("torch") else "ort-cpu", precision="fp32", shape=shape,
               batch=bshd[0], n=len(times_s), p50_ms=round(float(np.median(times_s)) * 1e3, 1),
               p90_ms=round(float(np.percentile(times_s, 90)) * 1e3, 1), load_avg=load, op="self-attention",
               B_S_heads_headsize=list(bshd), impl=impl, min_ms=round(min(times_s) * 1e3, 1), **figures)


if __name__ == "__main__":
    main()
