"""Activation-aware rounding of int8 conv weights (GPTQ, Frantar et al. 2022) written back as float weights.

Why: on PP-OCRv5 mobile det, per-channel int8 weights with round-to-nearest cost more than the
activations: quantizing only the weights (activations float) gave 12.8 dB output SQNR on page.png
although every weight tensor's own SQNR is 34-46 dB; one 48x48 pointwise conv alone gave 12.7 dB.
Some input channels carry large activations through small weights, and round-to-nearest error on
those weights is multiplied by the large inputs. GPTQ rounds column by column and pushes each
column's rounding error onto the not-yet-rounded columns through the inverse of the input second
moment ``H = E[x x^T]``, minimising ``||(W - Q) X||^2`` (the conv's output error) instead of
``||W - Q||^2``.

The result is written back as float weights ``q * s`` with the scale rule both placements use
(``s = max|w| / 127`` per output channel); each channel keeps its largest weight at exactly
``+-127 s``, so the placements' own quantization of these weights reproduces ``q`` exactly and
neither placement needs to know about this pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vkt.errors import CalibrationError
from vkt.log import get_logger, progress, timed

log = get_logger(__name__)

INT8_MAX = 127
MAX_POSITIONS = 2048  # output positions sampled per feed and conv for H (keeps H cheap at 736x1024)


def gptq_round(w: np.ndarray, h: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Int8 codes of ``w`` [G, R, K] (G groups of R rows over K inputs) given ``h`` [G, K, K] = sum of x x^T.

    Per-row scale ``max|w_row| / 127`` (the placements' rule); each row's largest weight is pinned
    (never updated) so it stays at exactly ``+-127``. Returns int8 [G, R, K].
    """
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    if w.ndim != 3 or h.shape != (w.shape[0], w.shape[2], w.shape[2]):
        raise CalibrationError(f"gptq_round expects w [G, R, K] and h [G, K, K], got {w.shape} and {h.shape}")
    k = w.shape[2]
    amax = np.abs(w).max(axis=2)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0)  # [G, R]
    pinned = np.zeros_like(w, bool)
    idx = np.abs(w).argmax(axis=2)
    np.put_along_axis(pinned, idx[..., None], True, axis=2)
    # Dead inputs (never non-zero) carry no error: unit diagonal keeps H invertible.
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    h[:, np.arange(k), np.arange(k)] += np.where(dead, 1.0, 0.0)
    mean_diag = np.einsum("gkk->gk", h).mean(axis=1)
    h[:, np.arange(k), np.arange(k)] += damp * mean_diag[:, None]
    try:
        hinv = np.linalg.inv(h)
        u = np.transpose(np.linalg.cholesky(hinv), (0, 2, 1))  # upper: hinv = u^T u
    except np.linalg.LinAlgError:
        raise CalibrationError("gptq_round: the input second-moment matrix is not positive definite even after damping") from None
    q = np.zeros_like(w)
    for i in range(k):
        col = w[:, :, i]
        qi = np.clip(np.rint(col / scale), -INT8_MAX, INT8_MAX)
        q[:, :, i] = qi
        err = (col - qi * scale) / u[:, i, i][:, None]  # [G, R]
        if i + 1 < k:
            upd = err[:, :, None] * u[:, None, i, i + 1:]  # [G, R, K-i-1]
            w[:, :, i + 1:] -= np.where(pinned[:, :, i + 1:], 0.0, upd)
    return q.astype(np.int8)


def _patches(x: np.ndarray, attrs: Mapping[str, Any], kshape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Input patches of a 2-D conv: x [C, H, W] -> [C, kh, kw, P] for up to MAX_POSITIONS output positions."""
    from numpy.lib.stride_tricks import sliding_window_view

    kh, kw = kshape
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))[:, ::sh, ::sw, ::dh, ::dw]
    c, ho, wo = win.shape[:3]
    n = ho * wo
    pick = np.arange(n) if n <= MAX_POSITIONS else np.sort(rng.choice(n, MAX_POSITIONS, replace=False))
    flat = win.reshape(c, n, kh, kw)[:, pick]  # [C, P, kh, kw]
    return np.ascontiguousarray(flat.transpose(0, 2, 3, 1), dtype=np.float32)


def round_conv_weights(model: Any, feeds: Iterable[Mapping[str, np.ndarray]], *, damp: float = 0.01, seed: int = 0,
                       show_progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A copy of ``model`` (prepared FP32 graph) whose 2-D Conv weights are GPTQ-rounded int8 values times their scale.

    Runs ``feeds`` through the float model once to collect each conv's input second moments.
    Conv nodes with non-constant weights, other ranks or auto_pad are left alone. Returns the new
    model and a report ``{"convs": n, "skipped": [...], "feeds": n}``.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    convs = []
    skipped = []
    for n in g.node:
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = inits.get(n.input[1])
        ok = w is not None and len(w.dims) == 4 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        (convs if ok else skipped).append((n, attrs) if ok else n.name)
    if not convs:
        return model, {"convs": 0, "skipped": skipped, "feeds": 0}
    names = sorted({n.input[0] for n, _ in convs})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for t in names:
        if t not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    hs: dict[str, np.ndarray] = {}
    count = 0
    with timed("collecting conv input statistics for weight rounding", log):
        for feed in progress(feeds, "weight statistics", enabled=show_progress):
            out = dict(zip(names, sess.run(names, dict(feed))))
            for n, attrs in convs:
                w = numpy_helper.to_array(inits[n.input[1]])
                cout, cin_g, kh, kw = w.shape
                groups = int(attrs.get("group", 1))
                x = out[n.input[0]]
                for b in range(x.shape[0]):
                    p = _patches(x[b], attrs, (kh, kw), rng)  # [C, kh, kw, P]
                    p = p.reshape(groups, cin_g * kh * kw, -1)
                    h = np.matmul(p, p.transpose(0, 2, 1)).astype(np.float64)
                    hs[n.name] = hs[n.name] + h if n.name in hs else h
            count += 1
    if count == 0:
        raise CalibrationError("round_conv_weights needs at least one feed")
    out_model = onnx.ModelProto()
    out_model.CopyFrom(model)
    new_inits = {i.name: i for i in out_model.graph.initializer}
    readers: dict[str, int] = {}
    for n in out_model.graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    with timed("GPTQ weight rounding", log):
        for n, _attrs in convs:
            wname = n.input[1]
            w = numpy_helper.to_array(inits[wname]).astype(np.float32)
            cout, cin_g, kh, kw = w.shape
            groups = hs[n.name].shape[0]
            wg = w.reshape(groups, cout // groups, cin_g * kh * kw)
            q = gptq_round(wg, hs[n.name], damp=damp).astype(np.float32)
            amax = np.abs(wg).max(axis=2, keepdims=True)
            scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
            new = (q * scale).reshape(w.shape).astype(np.float32)
            if readers.get(wname, 0) > 1:
                raise CalibrationError(f"conv weight {wname!r} is shared by several nodes; cannot round it for one of them")
            new_inits[wname].CopyFrom(numpy_helper.from_array(new, wname))
    log.info("GPTQ-rounded %d conv weights from %d feed(s)", len(convs), count)
    return out_model, {"convs": len(convs), "skipped": skipped, "feeds": count}
