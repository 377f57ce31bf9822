"""Is an imported graph a DB text detector? One image input [N, 3, H, W] -> a probability map [N, C, H, W] at its resolution.

``vkt export onnx --task textdet`` (and :func:`vkt.export.textdet_bundle.make_textdet_bundle`) run these checks
before anything is written, so a classifier or a half-resolution map fails at export with a message
saying what was found, not at ``vkt run`` with an IndexError or silently wrong boxes:

    1. declared shapes: one float32 input of rank 4 with 3 channels; output 0 of rank 4 whose channel
       dim (if static) is 1, or holds ``channel``;
    2. onnxruntime runs the graph at two input shapes from the profile (its smallest, and a larger
       non-square one with batch 2 where the profile allows): output 0 must be [N, C, H, W] with the
       input's N, H, W, C == 1 unless ``channel`` picks one of C channels, values in [0, 1];
    3. output 0's dims are then named after the input's (``batch``, C, ``height``, ``width``) instead of
       whatever the exporter wrote (``ConvTranspose_497_o0__d1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.runtime.image import Preprocessor

EXPECTED = "a one-channel probability map [N, 1, H, W] at the input's resolution"
_TOL = 1e-3  # probabilities computed in float32 may overshoot [0, 1] by rounding


def check_settings(pre: Mapping[str, Any], post: Mapping[str, Any]) -> None:
    """Check a textdet manifest's preprocess / postprocess pair (InputError naming the bad key), before any load."""
    from vkt.runtime.textdet import DBParams

    DBParams.from_dict(post)
    Preprocessor(pre)


def check_graph(model: Any, profile: Mapping[str, Sequence[int]], post: Mapping[str, Any]) -> None:
    """The import hook: :func:`check_text_detector` with the postprocess ``channel`` if one is set."""
    check_text_detector(model, profile, post.get("channel"))


def _dims(vi: Any) -> list[int | str]:
    """Declared dims of a ValueInfo: ints for static dims, names (or '?') for dynamic ones."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _not_a_detector(what: str, channel: int | None, channels: int | None = None) -> InputError:
    hint = ""
    if channel is None and channels is not None and channels > 1:
        hint = (f"; if one of its {channels} channels is the text probability, name it (postprocess channel, "
                "`vkt export onnx --channel K`)")
    want = EXPECTED if channel is None else f"a probability map [N, C > {channel}, H, W] at the input's resolution"
    return InputError(f"this is not a text detector: {what}, expected {want}{hint}")


def _feed_shapes(dims: list[int | str], profile: Mapping[str, Sequence[int]]) -> list[tuple[int, ...]] | None:
    """Two input shapes within the profile: its smallest, and (batch 2, 2x height, 3x width) clipped to its max."""
    small, large = [], []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            small.append(d)
            large.append(d)
            continue
        if d not in profile:
            return None  # an axis without a range: the spec's own check reports it
        lo, _, hi = (int(v) for v in profile[d])
        small.append(lo)
        large.append(min(lo * (1, 1, 2, 3)[i] + (1 if i == 0 else 0), hi))
    return [tuple(small)] if small == large else [tuple(small), tuple(large)]


def check_text_detector(model: Any, profile: Mapping[str, Sequence[int]], channel: int | None = None) -> int:
    """Check that ``model`` (onnx.ModelProto, image axes already named) maps an image to a probability map.

    Args:
        model: the graph; output 0's dims are renamed in place after the input's on success.
        profile: ``{axis: (min, opt, max)}`` for the input's dynamic axes (the shapes it is run at).
        channel: the channel of a multi-channel map that holds the text probability (None: the map must
            have one channel).
    Returns:
        C, the map's channel count.
    Raises:
        InputError "this is not a text detector: ..." naming the shape found; ModelError if onnxruntime
        cannot run the graph.
    """
    import onnx
    import onnxruntime as ort

    # 1. Declared shapes.
    init = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in init]
    if len(inputs) != 1:
        raise InputError(f"this is not a text detector: it has {len(inputs)} inputs {[vi.name for vi in inputs]}, "
                         "expected one image input [N, 3, H, W]")
    inp, out = inputs[0], model.graph.output[0]
    idims, odims = _dims(inp), _dims(out)
    if len(idims) != 4 or idims[1] != 3 or inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        raise InputError(f"this is not a text detector: input {inp.name!r} is {dtype} {idims}, expected one float32 "
                         "image input [N, 3, H, W]")
    declared = out.type.tensor_type.HasField("shape")
    if declared and (len(odims) != 4 or (isinstance(odims[1], int) and odims[1] > 0
                                         and (odims[1] <= (channel or 0) or (channel is None and odims[1] != 1)))):
        raise _not_a_detector(f"output {out.name!r} has shape {odims}", channel,
                              odims[1] if len(odims) == 4 and isinstance(odims[1], int) else None)
    # 2. Run it (the declared shapes may be missing or wrong; exporters leave the channel dim dynamic).
    shapes = _feed_shapes(idims, profile)
    channels = odims[1] if len(odims) == 4 and isinstance(odims[1], int) and odims[1] > 0 else None
    if shapes is not None:
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load the graph: {str(e).strip().splitlines()[0][:300]}") from None
        rng = np.random.default_rng(0)
        for shape in shapes:
            x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
            try:
                y = np.asarray(sess.run([out.name], {inp.name: x})[0])
            except Exception as e:
                raise ModelError(f"onnxruntime cannot run the graph at input shape {list(shape)} (from the profile): "
                                 f"{str(e).strip().splitlines()[0][:300]}") from None
            n, _, h, w = shape
            c = y.shape[1] if y.ndim == 4 else None
            if y.ndim != 4 or (y.shape[0], y.shape[2], y.shape[3]) != (n, h, w) or c is None or \
                    (channel is None and c != 1) or (channel is not None and channel >= c):
                raise _not_a_detector(f"output {out.name!r} has shape {list(y.shape)} for an input of {list(shape)}",
                                      channel, c)
            lo, hi = float(y.min()), float(y.max())
            if lo < -_TOL or hi > 1 + _TOL or not np.isfinite(y).all():
                raise InputError(f"this is not a text detector: output {out.name!r} holds values in [{lo:.3g}, {hi:.3g}] "
                                 "on a test input, expected probabilities in [0, 1] (logits? end the graph with a Sigmoid)")
            channels = c
    # 3. Name the map's dims after the input's.
    if channels is not None:
        dims = out.type.tensor_type.shape.dim
        if len(dims) != 4:
            del dims[:]
            dims.extend(onnx.TensorShapeProto.Dimension() for _ in range(4))
        for d, src, fixed in zip(dims, inp.type.tensor_type.shape.dim, (None, channels, None, None)):
            if fixed is not None:
                d.dim_value = fixed
            elif src.HasField("dim_param"):
                d.dim_param = src.dim_param
            else:
                d.dim_value = src.dim_value
    return int(channels) if channels is not None else 1


__all__ = ["EXPECTED", "check_graph", "check_settings", "check_text_detector"]
