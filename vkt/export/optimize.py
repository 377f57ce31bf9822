"""Exact float rewrites of an imported graph, so the FP32 model runs as fast as its INT8 sibling's float part.

The INT8 path prepares the graph (``vkt.onnxgraph.prepare_model``: Constant weights to
initializers, onnxruntime's ``quant_pre_process``: Identity removal, constant and BatchNorm folding, shape
inference) and folds constant Mul/Add that follow a Conv into its weights
(``vkt.onnxgraph.fold_conv_affine``), then joins the HardSigmoid * x pairs the pre-processing split HardSwish into
back into HardSwish (``vkt.onnxgraph.fuse_hardswish``: OpenVINO fuses HardSwish into the convolution, not the
pair). Those rewrites are exact up to float rounding and have nothing
to do with quantization, yet onnxruntime does not do the folding itself: PP-OCRv5's learnable-affine
blocks (a scalar Mul and Add after each Conv) stay as two passes over the activation. Measured on the
2-core CPU (PP-OCRv5 mobile det, 736x736, session 5): 180 -> 154 ms at 1 thread, 108 -> 100 ms at 2.

So an imported FP32 graph gets the same rewrites (``vkt export onnx``; ``--no-optimize`` keeps the graph as
given), and INT8 speed-ups are measured against this FP32, not against the slower original. The rewritten
graph is kept only if it matches the original on onnxruntime (random input at the profile's smallest
shape); otherwise, or if a rewrite fails, the original is kept with a warning: an optimisation never fails
an export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vkt.log import get_logger
from vkt.onnxgraph import fold_conv_affine, fuse_hardswish, prepare_model

log = get_logger(__name__)
RTOL = 1e-3  # max |rewritten - original| allowed, relative to max |original| per output (plus ATOL)
ATOL = 1e-4


def optimize_fp32(model: Any, feed: Mapping[str, np.ndarray] | None) -> tuple[Any, dict[str, Any]]:
    """(graph to ship, report). The report names the rewrites, node counts and the measured max abs diff,
    or why the original was kept (``kept_original``)."""
    before = len(model.graph.node)
    try:
        if model.ByteSize() > 1_900_000_000:
            return model, {"kept_original": "graph over 2 GB (onnxruntime's quant_pre_process serialises it in memory)"}
        new, folded = fold_conv_affine(prepare_model(model))
        new, fused = fuse_hardswish(new)
    except Exception as e:  # an optional rewrite: keep the graph as given
        log.warning("float rewrites skipped (%s: %s); the graph is kept as given", type(e).__name__, str(e)[:200])
        return model, {"kept_original": f"rewrite failed: {type(e).__name__}: {str(e)[:200]}"}
    # Symbolic shape inference in prepare_model renames output dims (unk__12, ConvTranspose_497_o0__d1):
    # the outputs keep the types the caller declared (e.g. [batch, 1, height, width]).
    declared = {o.name: o.type for o in model.graph.output}
    for o in new.graph.output:
        if o.name in declared:
            o.type.CopyFrom(declared[o.name])
    report: dict[str, Any] = {"rewrites": ["prepare_model (quant_pre_process)", "fold_conv_affine", "fuse_hardswish"],
                              "folded_into_conv": len(folded), "hardswish_fused": len(fused), "nodes_before": before,
                              "nodes_after": len(new.graph.node)}
    if feed is None:
        report["kept_original"] = "no feed to check the rewritten graph against"
        return model, report
    diff, bound = _max_diff(model, new, feed)
    report["max_abs_diff"] = float(diff)
    if not diff <= bound:
        log.warning("float rewrites changed outputs by %.3g (allowed %.3g); the graph is kept as given", diff, bound)
        report["kept_original"] = f"outputs differ by {diff:.3g} > {bound:.3g}"
        return model, report
    log.info("float rewrites: %d -> %d nodes (%d Mul/Add folded into convs), max abs diff %.2g",
             before, len(new.graph.node), len(folded), diff)
    return new, report


def _max_diff(a: Any, b: Any, feed: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(max abs difference over outputs, allowed bound) of two graphs on onnxruntime CPU."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    outs = []
    for m in (a, b):
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs.append(s.run(None, dict(feed)))
    diff = max((float(np.abs(x.astype(np.float64) - y).max()) if x.size else 0.0) for x, y in zip(*outs))
    bound = max((RTOL * float(np.abs(x).max()) if x.size else 0.0) for x in outs[0]) + ATOL
    return diff, bound
