"""SD 1.5's largest self-attention (64x64 latents: 4096 tokens, 8 heads x 40, batch 2 for guidance) on CPU:
onnxruntime's fused MultiHeadAttention (what vkt.models.sd.optimize puts in the .ort.onnx UNet) vs the plain
MatMul-Softmax-MatMul graph of an unfused export vs torch's scaled_dot_product_attention, interleaved.

    .venv/bin/python benchmarks/bench_sd_attention.py [--reps 5] [--threads 2]

Prints one JSON row per implementation, then a table. Tells whether attention is where the SD UNet's
time goes at 512x512 (it is not: see docs/ARCHITECTURE.md).
"""
import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
B, S, H, D = 2, 4096, 8, 40
E = H * D
torch.set_num_threads(args.threads)
# ORT contrib MultiHeadAttention (q,k,v already projected, BSE layout)
node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=H)
g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, S, E]) for n in "qkv"],
                      [helper.make_tensor_value_info("o", TensorProto.FLOAT, [B, S, E])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]); m.ir_version = 8
so = ort.SessionOptions(); so.intra_op_num_threads = args.threads
s_mha = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
# plain ONNX: MatMul + Softmax + MatMul (what the unfused export runs)
x = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B * H, S, D]) for n in "qkv"]
nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]),
         helper.make_node("Softmax", ["s"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "v"], ["o"])]
g2 = helper.make_graph(nodes, "g2", x, [helper.make_tensor_value_info("o", TensorProto.FLOAT, [B * H, S, D])])
m2 = helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17)]); m2.ir_version = 8
s_plain = ort.InferenceSession(m2.SerializeToString(), so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((B, S, E), dtype=np.float32) * 0.3 for _ in range(3))
qh, kh, vh = (a.reshape(B, S, H, D).transpose(0, 2, 1, 3).reshape(B * H, S, D).copy() for a in (q, k, v))
tq, tk, tv = (torch.from_numpy(a.reshape(B, H, S, D)) for a in (qh, kh, vh))
fns = {"ort-mha": lambda: s_mha.run(None, {"q": q, "k": k, "v": v}),
       "ort-plain": lambda: s_plain.run(None, {"q": qh * (D ** -0.5), "k": kh, "v": vh}),
       "torch-sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)}
ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).numpy().reshape(B, H, S, D)
o = s_mha.run(None, {"q": q, "k": k, "v": v})[0].reshape(B, S, H, D).transpose(0, 2, 1, 3)
err = float(np.abs(o - ref).max())
ts = {n: [] for n in fns}
for f in fns.values(): f()
for _ in range(args.reps):
    for n, f in fns.items():
        t = time.perf_counter(); f(); ts[n].append(time.perf_counter() - t)
p50 = {n: float(np.median(v)) * 1e3 for n, v in ts.items()}
for n in fns:
    print(json.dumps({"op": "self-attention", "impl": n, "shape": [B, S, H, D], "threads": args.threads, "n": args.reps,
                      "p50_ms": round(p50[n], 1), "vs_torch_sdpa": round(p50["torch-sdpa"] / p50[n], 2),
                      "mha_vs_sdpa_max_abs": err, "load_avg_1m": round(os.getloadavg()[0], 2)}))
print(f"\n{'impl':<12}{'p50 ms':>10}{'vs sdpa':>10}")
for n in fns:
    print(f"{n:<12}{p50[n]:>10.1f}{p50['torch-sdpa'] / p50[n]:>9.2f}x")
