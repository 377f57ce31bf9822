"""onnxruntime-only SD graphs: onnxruntime.transformers' fusions (attention, LayerNorm, Gelu) kept to CPU kernels.

Each component's plain graph stays the canonical ``fp32 onnx`` (the one TensorRT builds and calibration
reads); the fused graph is added beside it as ``<component>.ort.onnx``, role ``fp32 onnx`` with meta
``placement: "ort"``, so ``make_runner(backend="ort")`` takes it and every other backend the plain one.

Which fusions, and why (onnxruntime 1.31, CPUExecutionProvider):
- kept: self-attention -> ``Attention`` (packed QKV weights), cross-attention -> ``MultiHeadAttention``,
  LayerNorm -> ``LayerNormalization`` / ``SkipLayerNormalization``, Gelu / QuickGelu: all have CPU kernels;
- off: ``GroupNorm``, ``SkipGroupNorm``, ``NhwcConv``, ``BiasSplitGelu``, ``BiasAdd`` and packed
  QKV / KV for MultiHeadAttention: CUDA-only kernels (a CPU session would fail to load them).
Then exact rewrites (vkt.models.sd.cpu_rewrites) that cut CPU work: UNet and VAE up-samplers (nearest x2 +
3x3 conv) as four 2x2 sub-pixel convs (2.25x fewer FLOPs), UNet self-attention as MultiHeadAttention (the CPU
flash-attention kernel) instead of packed-QKV ``Attention``. So the VAE decoder, where no fusion applies, gets an
``.ort.onnx`` graph too.
The written graph is checked: every com.microsoft op must be in :data:`CPU_CONTRIB_OPS`, and its
output must match the plain graph's on onnxruntime CPU (``max |fused - plain| / max |plain|``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import ModelError
from vkt.log import get_logger, timed

log = get_logger(__name__)

MODEL_TYPES = {"text_encoder": "clip", "unet": "unet", "vae_decoder": "vae"}
CPU_CONTRIB_OPS = frozenset({"Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu",
                             "Gelu", "QuickGelu", "FusedMatMul", "FusedConv"})
_CUDA_ONLY = ("enable_group_norm", "enable_skip_group_norm", "enable_nhwc_conv", "enable_bias_splitgelu",
              "enable_bias_add", "enable_packed_qkv", "enable_packed_kv")


@contextlib.contextmanager
def _unet_num_heads_fix() -> Iterator[None]:
    """onnxruntime 1.31's FusionAttentionUnet.get_num_heads calls ``int()`` on a shape-[1] array, which
    numpy 2 refuses ("only 0-dimensional arrays can be converted"); read the element instead, for
    the duration of one optimisation. The optimizer imports its modules both as
    ``onnxruntime.transformers.x`` and as top-level ``x`` (it puts its folder on sys.path): patch both."""
    import importlib

    mods = []
    for name in ("onnxruntime.transformers.fusion_attention_unet", "fusion_attention_unet"):
        with contextlib.suppress(ImportError):
            mods.append(importlib.import_module(name))
    saved = [(m, m.FusionAttentionUnet.get_num_heads) for m in mods]

    def get_num_heads(self: Any, reshape_q: Any, is_torch2: bool = False) -> int:
        if not is_torch2:
            return orig(self, reshape_q, False)
        parent = self.model.get_parent(reshape_q, 1)
        if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
            v = self.model.get_constant_value(parent.input[2])
            if isinstance(v, np.ndarray) and v.size == 1 and int(v.reshape(-1)[0]) > 0:
                return int(v.reshape(-1)[0])
        return 0

    orig = saved[0][1] if saved else None
    try:
        for m, _ in saved:
            m.FusionAttentionUnet.get_num_heads = get_num_heads
        yield
    finally:
        for m, f in saved:
            m.FusionAttentionUnet.get_num_heads = f


def optimize_graph(src: str | Path, model_type: str) -> tuple[Any, dict[str, int], dict[str, int]]:
    """Fuse ``src`` (an .onnx path; external data beside it) for onnxruntime CPU, then apply the exact rewrites.

    Returns (onnx.ModelProto, {fused op type: count}, {rewrite: count}): weights that were external in
    ``src`` stay references to ``src``'s data file (save the result in the same folder); new (repacked or
    rewritten) weights are inline. Raises ModelError when the result holds a com.microsoft op without a
    CPU kernel.
    """
    with _quiet_optimizer():
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

    opts = FusionOptions(model_type)
    for k in _CUDA_ONLY:
        if hasattr(opts, k):
            setattr(opts, k, False)
    import onnx

    src = Path(src)
    # External weights stay on disk: the fusions read the few they repack (QKV) from the file, and the
    # fused graph keeps pointing at the same data file (so it must be saved beside it). Loading them
    # all made the SD 1.5 UNet's optimisation peak at ~14 GB (and get OOM-killed on a shared machine).
    proto = onnx.load(str(src), load_external_data=False)
    with _unet_num_heads_fix(), _quiet_optimizer(), _chdir(src.parent):
        # opt_level 0: fusions only; onnxruntime's own session-time optimisations (NCHWc convs, constant
        # folding) still run when the session loads the graph, as for the plain one.
        m = optimizer.optimize_model(proto, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0,
                                     optimization_options=opts, use_gpu=False)
    from vkt.models.sd.cpu_rewrites import self_attention_to_mha, subpixel_upsample_convs

    rewrites = {}
    if model_type in ("unet", "vae"):
        rewrites["subpixel_upsample_conv"] = subpixel_upsample_convs(m.model, src.parent)
    if model_type == "unet":
        rewrites["self_attention_mha"] = self_attention_to_mha(m.model)
    rewrites = {k: v for k, v in rewrites.items() if v}
    counts = Counter(n.op_type for n in m.model.graph.node if n.domain == "com.microsoft")
    bad = sorted(set(counts) - CPU_CONTRIB_OPS)
    if bad:
        raise ModelError(f"onnxruntime's {model_type} optimizer wrote {bad}, which have no CPU kernel")
    return m.model, dict(counts), rewrites


@contextlib.contextmanager
def _chdir(d: Path) -> Iterator[None]:
    """onnx resolves external-data locations against the working directory when no base dir is given
    (as the optimizer's fusions call it)."""
    import os

    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """The optimizer logs every fusion at INFO and shows tqdm bars: keep them out of vkt's output."""
    import logging
    import os
    import warnings

    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    lg = logging.getLogger("onnxruntime.transformers")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        lg.setLevel(level)
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def max_rel_diff(a_path: Path, b_path: Path, spec: Any, vocab_size: int = 256, threads: int | None = 1) -> float:
    """``max |b - a| / max |a|`` of two graphs with the same I/O on onnxruntime CPU, random feeds at the
    spec's min shapes (int inputs: token ids below ``vocab_size``; every CLIP vocabulary starts with 256 byte symbols)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    dims = {k: v[0] for k, v in spec.profiles[0].axes.items()} if spec.profiles else {}
    feed = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.dtype.startswith("int"):
            feed[t.name] = rng.integers(0, vocab_size, shape).astype(t.dtype)
        elif t.name == "timestep":
            feed[t.name] = rng.uniform(0, 999, shape).astype(np.float32)
        else:
            feed[t.name] = rng.standard_normal(shape).astype(np.float32)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    outs = []
    for p in (a_path, b_path):
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, feed)[0])
        del sess
    a, b = outs
    if a.shape != b.shape:
        raise ModelError(f"{Path(b_path).name} output shape {b.shape} differs from {Path(a_path).name}'s {a.shape}")
    return float(np.abs(b - a).max() / max(float(np.abs(a).max()), 1e-12))


def add_ort_graphs(bundle: Any, components: Sequence[str] = ("text_encoder", "unet", "vae_decoder"),
                   tol: float = 1e-4) -> dict[str, dict[str, Any]]:
    """Write ``<component>.ort.onnx`` (fused for onnxruntime CPU) into an SD bundle for each component.

    Args:
        bundle: a ``vkt.bundle.Bundle`` or its folder, with plain ``fp32 onnx`` graphs.
        components: which graphs to fuse.
        tol: largest accepted ``max |fused - plain| / max |plain|``; above it the component keeps only
            its plain graph and a warning says why.
    Returns:
        {component: {"fused": {op: count}, "rewrites": {rewrite: count}, "parity_max_rel": float, "file": name}}
        for the graphs added.
    A graph with external data shares its plain graph's data file (only repacked weights are new).
    """
    from vkt.bundle import Bundle
    from vkt.fsutil import atomic_write_bytes
    from vkt.onnxio import save_onnx

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    done: dict[str, dict[str, Any]] = {}
    for comp in components:
        if comp not in MODEL_TYPES:
            raise ModelError(f"no onnxruntime fusion recipe for component {comp!r}; expected some of {sorted(MODEL_TYPES)}")
        plain = b.path("fp32 onnx", comp)
        with timed(f"fusing {comp} for onnxruntime CPU", log):
            proto, counts, rewrites = optimize_graph(plain, MODEL_TYPES[comp])
        if not counts and not rewrites:
            log.info("%s: nothing to fuse or rewrite; keeping the plain graph only", comp)
            continue
        name = f"{comp}.ort.onnx"
        shared = sorted({kv.value for t in proto.graph.initializer for kv in t.external_data if kv.key == "location"})
        if shared:  # weights stay in the plain graph's data file; only the repacked ones are inline
            if proto.ByteSize() >= 2**31 - 1:  # protobuf's own limit
                raise ModelError(f"{comp}: the fused graph's inline weights pass 2 GB; cannot write it")
            atomic_write_bytes(b.root / name, proto.SerializeToString())
            files = [b.root / name]
        else:
            files = save_onnx(proto, b.root / name)  # atomic; recorded in the manifest only once checked
        del proto
        err = max_rel_diff(plain, files[0], b.spec(comp))
        if not err <= tol:
            for f in files:
                f.unlink(missing_ok=True)
            log.warning("%s: the fused graph differs from the plain one by %.3g (> tol %g); not added", comp, err, tol)
            continue
        meta = {"placement": "ort", "optimizer": "onnxruntime.transformers", "model_type": MODEL_TYPES[comp],
                "fused": counts, "rewrites": rewrites, "parity_max_rel": err,
                **({"shares_external_data": shared} if shared else {})}
        if len(files) > 1:
            b.add_file(files[1], files[1].name, role="onnx external data", component=comp, meta={"placement": "ort"})
        b.add_file(files[0], name, role="fp32 onnx", component=comp, meta=meta)
        done[comp] = {"fused": counts, "rewrites": rewrites, "parity_max_rel": err, "file": name}
        log.info("%s: fused %s, rewrote %s; max rel diff vs plain %.2g", comp, counts, rewrites, err)
    return done


__all__ = ["CPU_CONTRIB_OPS", "MODEL_TYPES", "add_ort_graphs", "max_rel_diff", "optimize_graph"]
