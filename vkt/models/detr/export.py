"""Export transformers' DETR to ONNX: raw heads or in-graph post-processing, dynamic or static shapes, no NonZero.

Graph I/O (names are the spec's; ``Q`` queries, ``C`` classes, ``K = min(top_k, Q)``)::

    raw:          pixel_values [batch, 3, height, width] -> logits [batch, Q, C + 1], pred_boxes [batch, Q, 4]
                  (boxes cxcywh, normalised to [0, 1] of the network input; the last class is "no object")
    postprocess:  pixel_values, orig_sizes [batch, 2] (height, width) float32
                  -> scores [batch, K] float32, labels [batch, K] int32, boxes [batch, K, 4] float32
                  (xyxy in source pixels, sorted by score, best first; a consumer keeps score > threshold)
    + pixel_mask  optional [batch, height, width] float32 input (1 = image, 0 = padding) for padded batches

Why a wrapper instead of ``DetrForObjectDetection.forward``: the reference forward always builds a
boolean pixel mask (all ones when none is given), interpolates it and turns it into attention masks
whose padding branch depends on the data; its sine position embedding is also memoised with an LRU
cache keyed on the shape, which a tracer can freeze into a constant of the traced size. The wrapper
calls the same submodules (backbone, projection, encoder, decoder, heads) but computes the position
embedding itself from the feature map's shape (Range ops, so height and width stay dynamic) and, when
there is no mask input, passes no attention mask at all — the result equals the reference with an
all-ones mask (cumsum of ones == arange), and the graph holds no NonZero/boolean indexing, which
TensorRT cannot build. With ``pixel_mask`` the mask becomes an additive float bias (0 / float32 min),
never a boolean index.

Exporter: the TorchScript exporter (``dynamo=False``), as in vkt.models.textdet.export: it honours
``dynamic_axes`` as given, and torch 2.14's default dynamo exporter needs onnxscript.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError, SpecError
from vkt.log import get_logger, timed
from vkt.specs import ExportSpec, Profile, TensorSpec

log = get_logger(__name__)

PIXELS, MASK, SIZES = "pixel_values", "pixel_mask", "orig_sizes"
LOGITS, BOXES_RAW = "logits", "pred_boxes"
SCORES, LABELS, BOXES = "scores", "labels", "boxes"
STRIDE = 32  # ResNet's output stride: the feature map is ceil(H / 32) x ceil(W / 32)


def detr_spec(num_queries: int, num_classes: int, postprocess: bool = False, top_k: int = 100,
              pixel_mask: bool = False, static_shape: tuple[int, int, int] | None = None,
              profile: dict[str, tuple[int, int, int]] | None = None, opset: int = 17) -> ExportSpec:
    """The ExportSpec of a DETR graph (module docstring lists the I/O).

    Args:
        num_queries: Q, the model's object queries (100 for DETR-R50).
        num_classes: C, real classes (91 COCO ids for DETR-R50); logits have C + 1 columns.
        postprocess: final scores/labels/boxes instead of logits/pred_boxes.
        top_k: K = min(top_k, Q) detections per image when ``postprocess``.
        pixel_mask: add the ``pixel_mask`` input for padded batches.
        static_shape: ``(batch, height, width)`` for a static-shape graph (no dynamic axes, no profile).
        profile: ``{"batch": (min, opt, max), "height": ..., "width": ...}``; default
            ``vkt.tasks.TASKS["detr"].profile`` (batch 1..4, sides 320..1333).
    """
    from vkt.tasks import TASKS

    for name, v in (("num_queries", num_queries), ("num_classes", num_classes), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"{name} must be a positive integer, got {v!r}")
    if static_shape is not None:
        if len(static_shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in static_shape):
            raise SpecError(f"static_shape must be (batch, height, width) positive integers, got {static_shape!r}")
        b, h, w = static_shape
        profiles: tuple[Profile, ...] = ()
    else:
        b, h, w = "batch", "height", "width"
        profiles = (Profile(dict(profile or TASKS["detr"].profile)),)
    inputs = [TensorSpec(PIXELS, "float32", (b, 3, h, w))]
    if pixel_mask:
        inputs.append(TensorSpec(MASK, "float32", (b, h, w)))
    if postprocess:
        k = min(top_k, num_queries)
        inputs.append(TensorSpec(SIZES, "float32", (b, 2)))
        outputs = (TensorSpec(SCORES, "float32", (b, k)), TensorSpec(LABELS, "int32", (b, k)),
                   TensorSpec(BOXES, "float32", (b, k, 4)))
    else:
        outputs = (TensorSpec(LOGITS, "float32", (b, num_queries, num_classes + 1)),
                   TensorSpec(BOXES_RAW, "float32", (b, num_queries, 4)))
    return ExportSpec(tuple(inputs), outputs, profiles, opset)


def export_module(model: Any, postprocess: bool = False, top_k: int = 100, pixel_mask: bool = False) -> Any:
    """Wrap a ``DetrForObjectDetection`` so that its forward takes and returns plain tensors.

    forward(pixel_values [B, 3, H, W] (, pixel_mask [B, H, W]) (, orig_sizes [B, 2])) returns
    ``(logits [B, Q, C + 1], pred_boxes [B, Q, 4])`` or, with ``postprocess``,
    ``(scores [B, K], labels [B, K] int32, boxes [B, K, 4] xyxy source pixels)``.
    """
    import torch
    from torch import nn

    from transformers import DetrForObjectDetection

    if not isinstance(model, DetrForObjectDetection):
        raise InputError(f"expected a transformers DetrForObjectDetection, got {type(model).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")

    class DetrExport(nn.Module):
        """DETR's forward without boolean masks or shape-keyed caches (see the module docstring)."""

        def __init__(self, detr: nn.Module):
            super().__init__()
            self.detr = detr
            cfg = detr.config
            self.learned = cfg.position_embedding_type == "learned"
            if cfg.position_embedding_type not in ("sine", "learned"):
                raise ModelError(f"unsupported position_embedding_type {cfg.position_embedding_type!r}; expected 'sine' or 'learned'")
            self.half = cfg.d_model // 2
            self.k = min(top_k, cfg.num_queries)

        def position(self, feat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            """2-D position embedding [B, d, h, w] of feature map ``feat`` [B, C, h, w] (mask: [B, h, w] float or None)."""
            b, _, h, w = feat.shape
            if self.learned:
                pe = self.detr.model.position_embedding
                x = pe.column_embeddings(torch.arange(w, device=feat.device))          # [w, d/2]
                y = pe.row_embeddings(torch.arange(h, device=feat.device))             # [h, d/2]
                pos = torch.cat([x[None, :, :].expand(h, -1, -1), y[:, None, :].expand(-1, w, -1)], dim=-1)
                return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)
            if mask is None:
                # cumsum of an all-ones mask, written as arange: Range ops keep h and w dynamic. Integer
                # Range + Cast, not a float Range: TensorRT-RTX fails to build a float Range once the
                # graph is converted to FP16 (Myelin mixes half and float in its lowering).
                y = torch.arange(1, h + 1, device=feat.device).to(feat.dtype)[None, :, None].expand(b, h, w)
                x = torch.arange(1, w + 1, device=feat.device).to(feat.dtype)[None, None, :].expand(b, h, w)
            else:
                y, x = mask.cumsum(1), mask.cumsum(2)
            # DETR's normalised sine embedding: positions scaled to [0, 2 pi], then sin/cos at
            # temperature ** (2 floor(i / 2) / (d / 2)) (Carion et al. 2020, as the reference code).
            eps, scale = 1e-6, 2 * math.pi
            y = y / (y[:, -1:, :] + eps) * scale
            x = x / (x[:, :, -1:] + eps) * scale
            i = torch.arange(self.half, dtype=torch.int64, device=feat.device).to(feat.dtype)
            dim_t = 10000.0 ** (2 * torch.div(i, 2, rounding_mode="floor") / self.half)   # [d/2]
            px, py = x[..., None] / dim_t, y[..., None] / dim_t                           # [B, h, w, d/2]
            px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
            py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
            return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)                        # [B, d, h, w]

        def heads(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.detr.model
            out = m.backbone.model(pixel_values)
            feat = out.feature_maps[-1] if hasattr(out, "feature_maps") else out[-1]       # [B, C, h, w]
            mask = bias = None
            if pixel_mask is not None:
                # Nearest-neighbour downsampling keeps 0/1 exactly (as the reference's interpolate).
                mask = nn.functional.interpolate(pixel_mask[:, None], size=feat.shape[-2:])[:, 0]   # [B, h, w]
                # Additive attention bias over keys [B, 1, 1, h*w]: 0 for image, float32 min for padding.
                # A Where, not (1 - mask) * min: in an FP16 graph min becomes -inf and 0 * -inf is NaN.
                keep = mask.flatten(1)[:, None, None, :] > 0.5
                bias = torch.where(keep, torch.zeros((), dtype=feat.dtype), torch.full((), torch.finfo(feat.dtype).min))
            src = m.input_projection(feat)                                                 # [B, d, h, w]
            pos = self.position(feat, mask).flatten(2).transpose(1, 2)                    # [B, hw, d]
            src = src.flatten(2).transpose(1, 2)                                           # [B, hw, d]
            memory = m.encoder(inputs_embeds=src, attention_mask=bias, spatial_position_embeddings=pos).last_hidden_state
            qpos = m.query_position_embeddings.weight[None].expand(src.shape[0], -1, -1)   # [B, Q, d]
            hs = m.decoder(inputs_embeds=torch.zeros_like(qpos), attention_mask=None, encoder_hidden_states=memory,
                           encoder_attention_mask=bias, spatial_position_embeddings=pos,
                           object_queries_position_embeddings=qpos).last_hidden_state      # [B, Q, d]
            logits = self.detr.class_labels_classifier(hs)                                 # [B, Q, C + 1]
            boxes = self.detr.bbox_predictor(hs).sigmoid()                                 # [B, Q, 4] cxcywh
            return logits, boxes

        def forward(self, pixel_values: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
            mask = extra[0] if pixel_mask else None
            logits, boxes = self.heads(pixel_values, mask)
            if not postprocess:
                return logits, boxes
            sizes = extra[-1]                                                              # [B, 2] (h, w)
            # As transformers' post_process_object_detection: softmax over C + 1, drop "no object".
            prob = logits.softmax(-1)[..., :-1]                                            # [B, Q, C]
            best, label = prob.max(-1)                                                     # [B, Q]
            scores, idx = best.topk(self.k, dim=1)                                         # [B, K], sorted
            labels = torch.gather(label, 1, idx).to(torch.int32)                           # [B, K]
            cx, cy, bw, bh = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4)).unbind(-1)
            xyxy = torch.stack([cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh], dim=-1)
            scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)[:, None, :]  # [B, 1, 4]
            return scores, labels, xyxy * scale

    model = model.eval().float()
    # Eager attention exports as MatMul/Softmax, which every backend parses; SDPA adds nothing in a graph.
    # (This switches the model's own setting too; export_detr restores it afterwards.)
    model.config._attn_implementation = "eager"
    return DetrExport(model).eval()


@dataclass(frozen=True)
class ExportReport:
    """What export_detr wrote: the file, its spec, the exporter and ORT-vs-torch max abs differences per output."""

    path: Path
    spec: ExportSpec
    parity: dict[str, float]
    exporter: str


def export_detr(model: Any, path: str | os.PathLike, postprocess: bool = False, top_k: int = 100,
                pixel_mask: bool = False, static_shape: tuple[int, int, int] | None = None,
                profile: dict[str, tuple[int, int, int]] | None = None, opset: int = 17,
                check_shape: tuple[int, int, int, int] | None = (1, 3, 320, 416), atol: float = 1e-4) -> ExportReport:
    """Export a ``DetrForObjectDetection`` to ``path`` (written atomically) and check it on onnxruntime.

    Args:
        model: the detector; exported in eval mode on CPU, float32.
        path: the ``.onnx`` file.
        postprocess, top_k, pixel_mask, static_shape, profile, opset: see :func:`detr_spec`.
        check_shape: ``(B, 3, H, W)`` random input at which every output of ORT must match torch within
            ``atol`` — for pixel ``boxes``, ``atol`` per pixel of the longest side (the static shape is
            used for a static graph); None skips the check.
    Returns:
        ExportReport; ``parity`` maps output names to max abs differences.
    Raises:
        InputError for bad arguments; ModelError when the graph fails the ONNX checker, holds a
        NonZero node, or misses parity.
    """
    from transformers import DetrForObjectDetection

    if not isinstance(model, DetrForObjectDetection):
        raise InputError(f"expected a transformers DetrForObjectDetection, got {type(model).__name__}")
    attn = model.config._attn_implementation
    try:
        with timed(f"export DETR to {Path(path).name}", log):
            return _export(model, path, postprocess, top_k, pixel_mask, static_shape, profile, opset, check_shape, atol)
    finally:
        model.config._attn_implementation = attn


def _export(model: Any, path: str | os.PathLike, postprocess: bool, top_k: int, pixel_mask: bool,
            static_shape: tuple[int, int, int] | None, profile: dict[str, tuple[int, int, int]] | None, opset: int,
            check_shape: tuple[int, int, int, int] | None, atol: float) -> ExportReport:
    import torch

    from vkt.onnxio import apply_spec_dims, check_onnx, save_onnx

    wrapper = export_module(model, postprocess=postprocess, top_k=top_k, pixel_mask=pixel_mask)
    cfg = model.config
    spec = detr_spec(cfg.num_queries, cfg.num_labels, postprocess, top_k, pixel_mask, static_shape, profile, opset)
    if static_shape is not None:
        shape = (static_shape[0], 3, static_shape[1], static_shape[2])
    else:
        shape = tuple(int(v) for v in (check_shape or (1, 3, 320, 416)))
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise InputError(f"check_shape must be (batch, 3, height, width), got {check_shape!r}")
    feed = example_feed(spec, shape)
    args = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter and tracer warn (deprecation, shape-dependent Python values that the
        # graph computes anyway); the choice is deliberate and parity is checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, buf, input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes() or None, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    import onnx

    proto = onnx.load_from_string(buf.getvalue())
    apply_spec_dims(proto, spec)
    check_onnx(proto)
    bad = sorted({n.op_type for n in proto.graph.node} & {"NonZero", "Compress"})
    if bad:
        raise ModelError(f"the exported DETR graph holds {bad} nodes, which TensorRT cannot build")
    save_onnx(proto, path)
    parity = {}
    if check_shape is not None or static_shape is not None:
        parity = onnx_parity(wrapper, path, feed, spec)
        # Final boxes are in pixels: their float32 rounding grows with the image, so they get atol per
        # pixel of the longest side (1e-4 * 1066 ~ 0.1 px); every other output is held to atol itself.
        side = float(feed[SIZES].max()) if SIZES in feed else 1.0
        limits = {k: atol * side if k == BOXES else atol for k in parity}
        off = {k: v for k, v in parity.items() if not v <= limits[k]}
        if off:
            raise ModelError(f"exported {str(path)!r} differs from torch by more than {atol} "
                             f"({atol} x {side:g} px for boxes): max abs diff {off}")
    return ExportReport(Path(path), spec, parity, "torchscript")


def export_bundle(model: Any, dest: str | os.PathLike, postprocess: bool = False, top_k: int = 100,
                  pixel_mask: bool = False, static_shape: tuple[int, int, int] | None = None,
                  profile: dict[str, tuple[int, int, int]] | None = None, opset: int = 17, overwrite: bool = False,
                  name: str | None = None, fp16: bool = False, **param_overrides: Any) -> Path:
    """Export ``model`` and write a DETR bundle (vkt.runtime.detection.Detector runs it) at ``dest``.

    The manifest gets ``TASKS["detr"]``'s pre/post-processing, the model's ``id2label`` as
    ``postprocess.labels``, and ``param_overrides`` (postprocess keys, or shortest_edge / longest_edge).
    ``fp16``: also write an FP16 graph (:func:`vkt.export.detr_bundle.make_detr_bundle`).
    Other arguments as :func:`export_detr`. Returns the bundle folder.
    """
    import tempfile

    from vkt.export.detr_bundle import make_detr_bundle

    with tempfile.TemporaryDirectory(prefix=".detr-export-") as tmp:
        rep = export_detr(model, Path(tmp) / "model.onnx", postprocess=postprocess, top_k=top_k, pixel_mask=pixel_mask,
                          static_shape=static_shape, profile=profile, opset=opset)
        id2label = model.config.id2label
        labels = [str(id2label.get(i, f"class_{i}")) for i in range(model.config.num_labels)]
        out = make_detr_bundle(rep.path, dest, labels=labels, spec=rep.spec, overwrite=overwrite, name=name,
                               fp16=fp16, **param_overrides)
    from vkt.bundle import Bundle

    Bundle.load(out, verify=False).update(export={"exporter": rep.exporter, "parity_max_abs": rep.parity,
                                                  "postprocess_in_graph": postprocess, "pixel_mask": pixel_mask})
    return out


def example_feed(spec: ExportSpec, shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for ``spec`` at ``shape`` (B, 3, H, W): normalised-range noise, an all-ones mask, sizes (H, W)."""
    b, _, h, w = shape
    rng = np.random.default_rng(seed)
    feed = {PIXELS: rng.uniform(-2.0, 2.0, (b, 3, h, w)).astype(np.float32)}
    names = spec.input_names
    if MASK in names:
        feed[MASK] = np.ones((b, h, w), dtype=np.float32)
    if SIZES in names:
        feed[SIZES] = np.tile(np.array([[h, w]], dtype=np.float32), (b, 1))
    return feed


def onnx_parity(module: Any, onnx_path: str | os.PathLike, feed: dict[str, np.ndarray], spec: ExportSpec) -> dict[str, float]:
    """Max abs difference per output between ``module`` in torch and the ONNX on onnxruntime CPU."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(spec.output_names, feed)
    with torch.no_grad():
        want = module(*(torch.from_numpy(feed[n]) for n in spec.input_names))
    out = {}
    for name, g, w in zip(spec.output_names, got, want):
        w = w.numpy()
        if g.shape != w.shape:
            raise ModelError(f"output {name!r}: ONNX shape {g.shape} differs from torch's {w.shape}")
        out[name] = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) if g.size else 0.0
    return out


