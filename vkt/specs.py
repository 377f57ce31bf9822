"""ExportSpec: I/O names, dtypes, named dynamic axes and shape profiles — one source for ONNX and engines.

Dynamic dimensions are *named* (``"batch"``, ``"height"``); a profile gives each name a
``(min, opt, max)`` range. The same spec yields ``torch.onnx.export``'s ``dynamic_axes``, the
TensorRT builder's per-input min/opt/max shapes, and the runtime's input validation, so the
three can never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vkt.errors import ShapeError, SpecError

Dim = int | str  # int: static size; str: name of a dynamic axis

# numpy dtype name <-> ONNX TensorProto enum value (kept as ints so this module needs no onnx import)
ONNX_DTYPES: dict[str, int] = {
    "float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7,
    "bool": 9, "float16": 10, "float64": 11, "uint32": 12, "uint64": 13, "bfloat16": 16,
}
ONNX_TO_DTYPE = {v: k for k, v in ONNX_DTYPES.items()}
_AXIS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints (static) and axis names (dynamic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"tensor name must be a non-empty string, got {self.name!r}")
        if self.dtype not in ONNX_DTYPES:
            raise SpecError(f"tensor {self.name!r}: dtype must be one of {sorted(ONNX_DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))
        for i, d in enumerate(self.shape):
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise SpecError(f"tensor {self.name!r} dim {i}: expected an int or an axis name, got {d!r}")
            if isinstance(d, int) and d < 0:
                raise SpecError(f"tensor {self.name!r} dim {i}: static size must be >= 0, got {d}")
            if isinstance(d, str) and not _AXIS_NAME.match(d):
                raise SpecError(f"tensor {self.name!r} dim {i}: axis name must be an identifier, got {d!r}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def rank(self) -> int:
        return len(self.shape)

    def resolve(self, axes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape for given axis sizes."""
        return tuple(d if isinstance(d, int) else int(axes[d]) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        try:
            return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))
        except KeyError as e:
            raise SpecError(f"tensor spec {dict(d)!r} lacks key {e.args[0]!r}") from None


@dataclass(frozen=True)
class Profile:
    """Ranges for named dynamic axes: ``{"batch": (1, 1, 8), "height": (32, 736, 1536)}``."""

    axes: Mapping[str, tuple[int, int, int]]

    def __post_init__(self) -> None:
        clean: dict[str, tuple[int, int, int]] = {}
        for name, rng in dict(self.axes).items():
            try:
                lo, opt, hi = (int(v) for v in rng)
            except (TypeError, ValueError):
                raise SpecError(f"profile axis {name!r}: expected (min, opt, max) integers, got {rng!r}") from None
            if not 1 <= lo <= opt <= hi:
                raise SpecError(f"profile axis {name!r}: expected 1 <= min <= opt <= max, got min={lo} opt={opt} max={hi}")
            clean[name] = (lo, opt, hi)
        object.__setattr__(self, "axes", clean)

    def shapes(self, tensor: TensorSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of one input under this profile."""
        return tuple(tensor.resolve({k: v[i] for k, v in self.axes.items()}) for i in range(3))  # type: ignore[return-value]

    def contains(self, sizes: Mapping[str, int]) -> bool:
        return all(self.axes[a][0] <= n <= self.axes[a][2] for a, n in sizes.items() if a in self.axes)

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.axes.items()}


@dataclass(frozen=True)
class ExportSpec:
    """Inputs, outputs and shape profiles of one graph.

    Args:
        inputs / outputs: tensor specs in graph order.
        profiles: zero or more profiles; every dynamic *input* axis must have a range in each.
        opset: ONNX opset used by the exporter.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[Profile, ...] = ()
    opset: int = 17
    _fast: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "profiles", tuple(p if isinstance(p, Profile) else Profile(p) for p in self.profiles))
        self.validate()
        # Pre-computed checks so that validating a feed costs microseconds.
        self._fast["inputs"] = [(t.name, np.dtype(_np_name(t.dtype)), t.shape) for t in self.inputs]
        self._fast["names"] = frozenset(t.name for t in self.inputs)

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.inputs:
            raise SpecError("an ExportSpec needs at least one input")
        if not self.outputs:
            raise SpecError("an ExportSpec needs at least one output")
        for group, tensors in (("input", self.inputs), ("output", self.outputs)):
            seen: set[str] = set()
            for t in tensors:
                if t.name in seen:
                    raise SpecError(f"{group} name {t.name!r} appears more than once")
                seen.add(t.name)
        clash = {t.name for t in self.inputs} & {t.name for t in self.outputs}
        if clash:
            raise SpecError(f"names used both as input and output: {sorted(clash)}")
        if not isinstance(self.opset, int) or not 7 <= self.opset <= 30:
            raise SpecError(f"opset must be an int in [7, 30], got {self.opset!r}")
        dyn = self.input_axes
        for i, p in enumerate(self.profiles):
            missing = sorted(dyn - set(p.axes))
            if missing:
                raise SpecError(f"profile {i} gives no (min, opt, max) range for dynamic axes {missing}")
            unknown = sorted(set(p.axes) - dyn)
            if unknown:
                raise SpecError(f"profile {i} names axes {unknown} that no input has (dynamic input axes: {sorted(dyn)})")

    @property
    def input_axes(self) -> set[str]:
        return {d for t in self.inputs for d in t.shape if isinstance(d, str)}

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def batch_axis(self) -> str | None:
        """The dynamic axis that leads every input and output (``"batch"``), or None: then calls cannot be
        batched together (the server's batcher, Triton's ``max_batch_size``)."""
        firsts = {t.shape[0] if t.shape else None for t in (*self.inputs, *self.outputs)}
        if len(firsts) == 1:
            (axis,) = firsts
            if isinstance(axis, str):
                return axis
        return None

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise SpecError(f"no input named {name!r}; inputs are {self.input_names}")

    # ---- consumers -------------------------------------------------------------------------
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export(dynamic_axes=...)`` for inputs and outputs."""
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def profile_shapes(self, index: int = 0) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per-input (min, opt, max) shapes of one profile, as TensorRT's ``set_shape`` wants them."""
        if not self.input_axes:
            return {t.name: (t.resolve({}),) * 3 for t in self.inputs}  # type: ignore[misc]
        if not self.profiles:
            raise SpecError(f"the spec has dynamic axes {sorted(self.input_axes)} but no profile")
        if not 0 <= index < len(self.profiles):
            raise SpecError(f"profile index must be in [0, {len(self.profiles)}), got {index}")
        return {t.name: self.profiles[index].shapes(t) for t in self.inputs}

    def opt_feed(self, index: int = 0, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """A random feed at the profile's opt shapes (for warm-up, benches and tests)."""
        rng = rng or np.random.default_rng(0)
        out = {}
        for name, (_, opt, _) in self.profile_shapes(index).items():
            dt = np.dtype(_np_name(self.input(name).dtype))
            if dt.kind == "f":
                out[name] = rng.standard_normal(opt).astype(dt)
            elif dt.kind == "b":
                out[name] = rng.integers(0, 2, opt).astype(dt)
            else:
                out[name] = rng.integers(0, 100, opt).astype(dt)
        return out

    def check_feed(self, feed: Mapping[str, np.ndarray]) -> int | None:
        """Raise ShapeError unless ``feed`` fits the spec; return the index of a profile holding it.

        Checks names (missing / unexpected), array type, dtype, rank, static sizes, that one axis
        name has one size across inputs, and that dynamic sizes fit at least one profile.
        """
        # Serving calls repeat the same few shapes: remember signatures that passed (bounded).
        ok = self._fast.setdefault("ok", {})
        try:
            key = tuple([(k, v.dtype, v.shape) for k, v in feed.items()])
            hit = ok.get(key, -1)
        except (AttributeError, TypeError):
            key, hit = None, -1
        if hit != -1:
            return hit
        index = self._check_feed(feed)
        if key is not None and len(ok) < 256:
            ok[key] = index
        return index

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> int | None:
        names = self._fast["names"]
        if feed.keys() != names:
            missing = sorted(names - set(feed))
            extra = sorted(set(feed) - names)
            parts = []
            if missing:
                parts.append(f"missing inputs {missing}")
            if extra:
                parts.append(f"unexpected inputs {extra}")
            raise ShapeError(f"{'; '.join(parts)}; the model takes {self.input_names}")
        sizes: dict[str, int] = {}
        for name, dtype, shape in self._fast["inputs"]:
            a = feed[name]
            if not isinstance(a, np.ndarray):
                raise ShapeError(f"input {name!r}: expected a numpy array, got {type(a).__name__}")
            if a.dtype != dtype:
                raise ShapeError(f"input {name!r}: expected dtype {dtype}, got {a.dtype}")
            if a.ndim != len(shape):
                raise ShapeError(f"input {name!r}: expected rank {len(shape)} {_fmt(shape)}, got rank {a.ndim} {a.shape}")
            for i, (d, n) in enumerate(zip(shape, a.shape)):
                if d.__class__ is int:
                    if d != n:
                        raise ShapeError(f"input {name!r} dim {i}: expected {d} {_fmt(shape)}, got {n} (shape {a.shape})")
                elif sizes.setdefault(d, n) != n:
                    raise ShapeError(f"axis {d!r} has size {sizes[d]} in one input but {n} in input {name!r}")
        if not self.profiles or not sizes:
            return None
        for i, p in enumerate(self.profiles):
            if p.contains(sizes):
                return i
        ranges = "; ".join(
            ", ".join(f"{a} in [{p.axes[a][0]}, {p.axes[a][2]}]" for a in sorted(sizes)) for p in self.profiles
        )
        raise ShapeError(f"axis sizes {sizes} fit no shape profile (allowed: {ranges})")

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "profiles": [p.to_dict() for p in self.profiles],
            "opset": self.opset,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportSpec:
        if not isinstance(d, Mapping) or "inputs" not in d or "outputs" not in d:
            raise SpecError(f"an ExportSpec dict needs 'inputs' and 'outputs', got keys {sorted(d) if isinstance(d, Mapping) else type(d).__name__}")
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            profiles=tuple(Profile(p) for p in d.get("profiles", [])),
            opset=int(d.get("opset", 17)),
        )

    def with_profiles(self, *profiles: Mapping[str, Sequence[int]] | Profile) -> ExportSpec:
        return ExportSpec(self.inputs, self.outputs, tuple(p if isinstance(p, Profile) else Profile(p) for p in profiles), self.opset)

    @classmethod
    def from_onnx(cls, model: Any, profiles: Sequence[Mapping[str, Sequence[int]] | Profile] = ()) -> ExportSpec:
        """Read I/O from an ``onnx.ModelProto`` (or a path). Unnamed dynamic dims get ``<input>_dim<i>`` names."""
        import onnx

        if not isinstance(model, onnx.ModelProto):
            from vkt.onnxio import load_onnx

            model = load_onnx(model, load_external_data=False)
        init = {i.name for i in model.graph.initializer}

        def spec(vi: Any) -> TensorSpec:
            tt = vi.type.tensor_type
            if tt.elem_type not in ONNX_TO_DTYPE:
                raise SpecError(f"tensor {vi.name!r} has ONNX element type {tt.elem_type}, which vkt does not support")
            dims: list[Dim] = []
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and _AXIS_NAME.match(d.dim_param):
                    dims.append(d.dim_param)
                else:
                    dims.append(f"{_safe(vi.name)}_dim{i}")
            return TensorSpec(vi.name, ONNX_TO_DTYPE[tt.elem_type], tuple(dims))

        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        return cls(
            inputs=tuple(spec(v) for v in model.graph.input if v.name not in init),
            outputs=tuple(spec(v) for v in model.graph.output),
            profiles=tuple(p if isinstance(p, Profile) else Profile(p) for p in profiles),
            opset=int(opset),
        )


def _np_name(dtype: str) -> str:
    if dtype == "bfloat16":
        raise SpecError("bfloat16 tensors cannot be fed from numpy; export the graph with float32 or float16 I/O")
    return dtype


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"t_{s}"


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def parse_profile(text: str) -> Profile:
    """Parse ``"batch=1:1:8,height=32:736:1536"`` (CLI syntax) into a Profile."""
    axes: dict[str, tuple[int, int, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rng = part.partition("=")
        vals = rng.split(":")
        if not name or len(vals) != 3:
            raise SpecError(f"profile entry must look like 'axis=min:opt:max', got {part!r}")
        try:
            axes[name.strip()] = tuple(int(v) for v in vals)  # type: ignore[assignment]
        except ValueError:
            raise SpecError(f"profile entry {part!r}: min, opt and max must be integers") from None
    if not axes:
        raise SpecError(f"empty profile {text!r}; expected e.g. 'batch=1:1:8,height=32:736:1536'")
    return Profile(axes)
