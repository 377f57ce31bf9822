"""FP16 graphs: convert an FP32 ONNX to FP16, keeping numerically sensitive ops and the I/O in FP32."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vkt.errors import ModelError

# Ops whose FP16 versions overflow or lose too much (reductions over large extents, exp/log/pow, norms,
# index and shape maths). LayerNorm/Softmax in FP32 is what TensorRT's own FP16 recipes keep too.
SENSITIVE_OPS = (
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt", "Exp", "Log",
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "Range", "TopK", "NonMaxSuppression", "CumSum", "RoiAlign", "Resize", "Upsample", "Einsum",
)


def convert_fp16(model: Any, keep_ops: Iterable[str] = SENSITIVE_OPS, keep_nodes: Iterable[str] = (),
                 keep_io_types: bool = True) -> Any:
    """Return an FP16 copy of an ``onnx.ModelProto``.

    Args:
        keep_ops: op types left in FP32 (Casts are inserted around them).
        keep_nodes: node names left in FP32.
        keep_io_types: graph inputs/outputs stay FP32, so callers feed the same arrays as for FP32.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    try:
        return convert_float_to_float16(
            model, keep_io_types=keep_io_types, op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *keep_ops}),
            node_block_list=list(keep_nodes), disable_shape_infer=False,
        )
    except Exception as e:  # the converter's failures are asserts and KeyErrors from odd graphs
        raise ModelError(f"FP16 conversion failed ({type(e).__name__}: {e})") from None
