"""KServe v2 / Open Inference Protocol over HTTP: JSON tensors and Triton's binary tensor data extension.

An infer request body is either pure JSON, or — with the binary extension — a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input order, of every
input whose ``parameters.binary_data_size`` is set (C order, little-endian). Outputs come back the
same way when the request asks (``outputs[i].parameters.binary_data`` or the request-level
``parameters.binary_data_output``). Errors are ``{"error": "..."}`` with a 4xx/5xx status, as
Triton answers. BYTES tensors are not supported (no served model takes strings yet).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vkt.runtime.server.errors import PayloadTooLargeError, RequestError

# KServe v2 datatype <-> numpy dtype name (the names vkt.specs uses).
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
DTYPE_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 64  # numpy's limit on array rank
JSON_SLACK = 1024  # values allowed beyond the model's inputs (ids, parameters, outputs lists)


# ---- datatypes ----------------------------------------------------------------------------------
def to_datatype(dtype: str | np.dtype) -> str:
    """numpy dtype (or its name) -> KServe datatype, e.g. ``float32`` -> ``FP32``."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPE_TO_DATATYPE:
        raise RequestError(f"dtype {name!r} has no KServe v2 datatype; supported: {sorted(DTYPE_TO_DATATYPE)}")
    return DTYPE_TO_DATATYPE[name]


def to_dtype(datatype: Any, where: str) -> np.dtype:
    """KServe datatype -> numpy dtype; BYTES, BF16 and unknown names are errors that say why."""
    if isinstance(datatype, str) and datatype in DATATYPES:
        return np.dtype(DATATYPES[datatype])
    if datatype == "BYTES":
        raise RequestError(f"{where}: datatype BYTES (strings) is not supported by this server; "
                           f"expected one of {sorted(DATATYPES)}")
    if datatype == "BF16":
        raise RequestError(f"{where}: datatype BF16 is not supported (numpy has no bfloat16); send FP32 or FP16")
    raise RequestError(f"{where}: unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}")


# ---- requests -----------------------------------------------------------------------------------
@dataclass
class InferRequest:
    """A parsed infer request.

    Attributes:
        inputs: ``{name: ndarray}`` with the shapes and dtypes the client declared.
        outputs: requested output names (None: all) -> whether each comes back binary.
        binary_default: binary for outputs not listed (request-level ``binary_data_output``).
        id: echoed in the response.
        timeout_us: the client's own deadline (Triton's ``parameters.timeout``, microseconds) or None.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool] | None = None
    binary_default: bool = False
    id: str | None = None
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_header_length(value: str | None, body_len: int) -> int | None:
    """Validate ``Inference-Header-Content-Length`` against the body size; None when absent."""
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise RequestError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < n <= body_len:
        raise RequestError(f"{HEADER_LENGTH} must be in [1, {body_len}] (the body has {body_len} bytes), got {n}")
    return n


def loads(text: bytes | str, what: str = "the body") -> Any:
    """Strict JSON: NaN/Infinity, integer literals past Python's 4,300 digits and deep nesting are 400s, not 500s."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"malformed JSON in {what}: {e}") from None
    except RecursionError:  # "[[[[..." thousands deep: the decoder's recursion limit, not a server fault
        raise RequestError(f"the JSON in {what} nests too deeply; tensor 'data' should be flat or nested like its shape") from None
    except ValueError as e:  # int("9" * 5000): sys.get_int_max_str_digits
        raise RequestError(f"malformed JSON in {what}: {str(e)[:120]}") from None


def _no_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a JSON number; send finite numbers (or the binary tensor extension for NaN/Inf)")


def parse_infer_request(body: bytes, header_length: int | None = None, max_values: int | None = None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors) into numpy arrays.

    ``max_values``: the most tensor values the model's inputs can hold (None: no bound); a JSON text
    that could hold more is refused (413) before it is parsed, since parsed JSON numbers cost ~10x
    their text in memory. Raises RequestError (400) naming the offending input and what was expected.
    """
    head, blob = (body, b"") if header_length is None else (body[:header_length], memoryview(body)[header_length:])
    _check_value_count(head, max_values)
    req = loads(head, "the JSON header (first Inference-Header-Content-Length bytes)" if header_length else "the body")
    if not isinstance(req, dict):
        raise RequestError(f"the request must be a JSON object with an 'inputs' list, got {type(req).__name__}")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"'parameters' must be an object, got {type(params).__name__}")
    raw_inputs = req.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError(f"'inputs' must be a non-empty list of tensors, got {_short(raw_inputs)}")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, dtype, shape, tparams = _tensor_header(t, f"inputs[{i}]")
        if name in inputs:
            raise RequestError(f"input {name!r} appears more than once in 'inputs'")
        where = f"input {name!r}"
        if "shared_memory_region" in tparams:
            raise RequestError(f"{where}: the shared-memory extension is not supported; send the tensor as "
                               "'data' or with the binary tensor extension")
        count = math.prod(shape)
        size = tparams.get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise RequestError(f"{where} has parameters.binary_data_size but the request has no {HEADER_LENGTH} header")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise RequestError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if size != count * dtype.itemsize:
                raise RequestError(f"{where}: binary_data_size is {size} bytes but shape {shape} of {to_datatype(dtype)} "
                                   f"needs {count * dtype.itemsize}")
            if offset + size > len(blob):
                raise RequestError(f"{where}: binary data ends at byte {offset + size} but only {len(blob)} bytes "
                                   f"follow the JSON header")
            arr = np.frombuffer(blob[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
            # frombuffer gives a read-only view of the request body (no copy); backends only read it.
            # On a big-endian host the wire order differs from the native one: convert.
            if dtype.kind == "b" and size and arr.view(np.uint8).max() > 1:
                raise RequestError(f"{where}: BOOL binary data must hold bytes 0 or 1, got {int(arr.view(np.uint8).max())}")
            inputs[name] = arr if arr.dtype == dtype else arr.astype(dtype)
            offset += size
        elif "data" in t:
            inputs[name] = _from_json_data(t["data"], dtype, shape, where)
        else:
            raise RequestError(f"{where} has neither 'data' nor parameters.binary_data_size")
    if header_length is not None and offset != len(blob):
        raise RequestError(f"{len(blob) - offset} bytes follow the JSON header that no input claims "
                           f"(binary_data_size values add up to {offset})")

    outputs = None
    raw_outputs = req.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise RequestError(f"'outputs' must be a list, got {type(raw_outputs).__name__}")
        outputs = {}
        for i, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise RequestError(f"outputs[{i}] must be an object with a string 'name', got {_short(o)}")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise RequestError(f"output {o['name']!r}: 'parameters' must be an object")
            if "shared_memory_region" in op:
                raise RequestError(f"output {o['name']!r}: the shared-memory extension is not supported")
            if op.get("classification"):
                raise RequestError(f"output {o['name']!r}: the classification extension is not supported")
            outputs[o["name"]] = bool(op.get("binary_data", params.get("binary_data_output", False)))

    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
        raise RequestError(f"parameters.timeout must be a non-negative integer (microseconds), got {timeout!r}")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(f"'id' must be a string, got {type(rid).__name__}")
    return InferRequest(inputs=inputs, outputs=outputs, binary_default=bool(params.get("binary_data_output", False)),
                        id=rid, timeout_us=timeout or None, parameters=params)


SHAPE = re.compile(rb'"shape"\s*:\s*\[([0-9,\s]*)\]')


def _check_value_count(head: bytes, max_values: int | None) -> None:
    """Refuse JSON text that holds more numbers than the declared shapes (and the model) take, before parsing it.

    The values in a JSON text number at most its commas + 1 (nested lists included), counted at C speed;
    the declared shapes are read with a regex (a "shape" inside a string only raises the bound).
    """
    bound = head.count(b",") + 1
    if bound <= JSON_SLACK:
        return
    declared = 0
    for m in SHAPE.finditer(head):
        dims = [d for d in m.group(1).replace(b" ", b"").split(b",") if d]
        if len(dims) > MAX_DIMS or any(len(d) > 12 for d in dims):
            return  # refused with a clear message once parsed
        declared += math.prod(int(d) for d in dims)
    limit = declared if max_values is None else min(declared, max_values)
    if bound > limit + JSON_SLACK:
        raise PayloadTooLargeError(f"the JSON holds up to {bound} values but its shapes declare {declared}"
                                   + ("" if max_values is None else f" and the model's inputs take at most {max_values}")
                                   + "; send as many values as the shapes need")


def _tensor_header(t: Any, where: str) -> tuple[str, np.dtype, tuple[int, ...], dict]:
    if not isinstance(t, dict):
        raise RequestError(f"{where} must be an object with name, shape, datatype, got {_short(t)}")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{where}: 'name' must be a non-empty string, got {_short(name)}")
    shape = t.get("shape")
    if isinstance(shape, list) and len(shape) > MAX_DIMS:
        raise RequestError(f"input {name!r}: 'shape' has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {_short(shape)}")
    dtype = to_dtype(t.get("datatype"), f"input {name!r}")
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"input {name!r}: 'parameters' must be an object, got {type(params).__name__}")
    return name, dtype, tuple(shape), params


def _from_json_data(data: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """JSON numbers (flat, row-major, or nested like the shape) -> array; no silent casts."""
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.asarray(data)
    except ValueError:  # ragged nesting
        raise RequestError(f"{where}: 'data' is a ragged nested list; nested lists must match 'shape', or send 'data' flat in row-major order") from None
    count = math.prod(shape)
    if arr.size != count:
        raise RequestError(f"{where}: 'data' holds {arr.size} values but shape {list(shape)} needs {count}")
    kind = arr.dtype.kind if arr.size else dtype.kind
    if dtype.kind in "iu" and kind in "fO":
        # numpy has no common integer type for ints on both sides of 2**63 (UINT64 data) and falls
        # back to float64 or object: judge the JSON values themselves before calling them floats.
        flat = np.asarray(data, dtype=object).ravel()
        if all(type(v) is int for v in flat):
            lo, hi = min(flat), max(flat)
            info = np.iinfo(dtype)
            if lo < info.min or hi > info.max:
                raise RequestError(f"{where}: values in [{lo}, {hi}] do not fit {to_datatype(dtype)} [{info.min}, {info.max}]")
            return np.array(flat.tolist(), dtype=dtype).reshape(shape)
    # Accept ints for floats; refuse floats for ints and numbers for BOOL rather than truncating.
    ok = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    if kind not in ok:
        got = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings", "O": "mixed values"}.get(kind, kind)
        raise RequestError(f"{where}: datatype {to_datatype(dtype)} needs "
                           f"{'true/false' if dtype.kind == 'b' else 'integers' if dtype.kind in 'iu' else 'numbers'} "
                           f"in 'data', got {got}")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise RequestError(f"{where}: values in [{lo}, {hi}] do not fit {to_datatype(dtype)} [{info.min}, {info.max}]")
    return arr.astype(dtype, copy=False).reshape(shape)


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "…"


# ---- responses ----------------------------------------------------------------------------------
def encode_infer_response(model_name: str, model_version: str, outputs: Mapping[str, np.ndarray],
                          request: InferRequest) -> tuple[bytes, int | None]:
    """Response body for ``outputs``, only those the request asked for, binary where it asked.

    Returns ``(body, header_length)``; ``header_length`` is None for a pure JSON body, else the
    value of the ``Inference-Header-Content-Length`` response header.
    """
    wanted = request.outputs if request.outputs is not None else {k: request.binary_default for k in outputs}
    unknown = [k for k in wanted if k not in outputs]
    if unknown:
        raise RequestError(f"requested outputs {unknown} do not exist; the model has outputs {list(outputs)}")
    tensors, blobs = [], []
    for name, binary in wanted.items():
        arr = outputs[name]
        t: dict[str, Any] = {"name": name, "datatype": to_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
            tensors.append(_dumps(t))
        else:
            # The numbers are written apart from the rest: json.dumps of a long float list is the
            # slowest step of a JSON response, and float32 needs 9 digits, not float64's 17.
            tensors.append(_dumps(t)[:-1] + ',"data":' + json_numbers(arr) + "}")
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        resp["id"] = request.id
    head = (_dumps(resp)[:-1] + ',"outputs":[' + ",".join(tensors) + "]}").encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# Significant digits that make float16 / float32 values round-trip exactly through decimal text.
_ROUND_TRIP = {2: "%.5g", 4: "%.9g"}


def json_numbers(arr: np.ndarray) -> str:
    """A flat JSON list of ``arr``'s values in C order, exact on decoding to the same dtype.

    float16/float32 are written with the digits their precision needs (2-3x less text and time
    than Python's float64 repr); NaN/Infinity fall back to json.dumps' spelling, which Python's
    and tritonclient's decoders accept.
    """
    flat = arr.ravel()
    fmt = _ROUND_TRIP.get(flat.dtype.itemsize) if flat.dtype.kind == "f" else None
    if fmt is not None and np.isfinite(flat).all():
        text = [fmt % v for v in flat.tolist()]
        for i in np.flatnonzero((flat == 0) & np.signbit(flat)):
            text[i] = "-0.0"  # "%g" writes "-0", which JSON decoders read as the integer 0
        return "[" + ",".join(text) + "]"
    return _dumps(flat.tolist())


def encode_infer_request(inputs: Mapping[str, np.ndarray], binary: bool = True, outputs: Mapping[str, bool] | None = None,
                         request_id: str | None = None) -> tuple[bytes, int | None]:
    """Client side of the protocol (benchmarks, tests, embedding code without tritonclient).

    Returns ``(body, header_length)`` like :func:`encode_infer_response`.
    """
    tensors, blobs = [], []
    for name, arr in inputs.items():
        t: dict[str, Any] = {"name": name, "datatype": to_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = arr.ravel().tolist()
        tensors.append(t)
    req: dict[str, Any] = {"inputs": tensors}
    if outputs is not None:
        req["outputs"] = [{"name": k, "parameters": {"binary_data": v}} for k, v in outputs.items()]
    else:
        req["parameters"] = {"binary_data_output": binary}
    if request_id is not None:
        req["id"] = request_id
    head = json.dumps(req, separators=(",", ":")).encode()
    return (head, None) if not blobs else (b"".join([head, *blobs]), len(head))


def decode_infer_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """Client side: response body -> ``{output name: ndarray}``."""
    head = body if header_length is None else body[:header_length]
    resp = json.loads(head)
    out, offset = {}, header_length or 0
    for t in resp["outputs"]:
        dtype = to_dtype(t["datatype"], f"output {t['name']!r}")
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[t["name"]] = np.frombuffer(body, dtype.newbyteorder("<"), math.prod(t["shape"]), offset).reshape(t["shape"])
            offset += size
        else:
            out[t["name"]] = np.asarray(t["data"], dtype).reshape(t["shape"])
    return out
