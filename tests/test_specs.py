"""ExportSpec validation, shape checks and the views that torch export / TensorRT read."""

import numpy as np
import pytest

from vkt.errors import ShapeError, SpecError
from vkt.specs import ExportSpec, Profile, TensorSpec, parse_profile


def _spec(**kw):
    return ExportSpec(
        inputs=(TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
        outputs=(TensorSpec("prob", "float32", ("batch", 1, "height", "width")),),
        profiles=kw.pop("profiles", ({"batch": (1, 1, 8), "height": (32, 736, 1536), "width": (32, 736, 1536)},)),
        **kw,
    )


def test_dynamic_axes_and_profile_shapes_come_from_one_source():
    spec = _spec()
    assert spec.dynamic_axes() == {"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 2: "height", 3: "width"}}
    lo, opt, hi = spec.profile_shapes(0)["image"]
    assert lo == (1, 3, 32, 32) and opt == (1, 3, 736, 736) and hi == (8, 3, 1536, 1536)


@pytest.mark.parametrize("rng", [(2, 1, 8), (1, 9, 8), (0, 1, 1), ("a", 1, 2), (1, 2)])
def test_profile_rejects_unordered_or_bad_ranges(rng):
    with pytest.raises(SpecError, match="batch"):
        Profile({"batch": rng})


def test_profile_must_cover_every_dynamic_axis():
    with pytest.raises(SpecError, match=r"no \(min, opt, max\) range for dynamic axes \['width'\]"):
        _spec(profiles=({"batch": (1, 1, 8), "height": (32, 736, 1536)},))


def test_profile_naming_unknown_axis_is_rejected():
    with pytest.raises(SpecError, match="names axes \\['depth'\\]"):
        _spec(profiles=({"batch": (1, 1, 8), "height": (1, 2, 3), "width": (1, 2, 3), "depth": (1, 1, 1)},))


def test_duplicate_and_clashing_names_are_rejected():
    t = TensorSpec("x", "float32", (1,))
    with pytest.raises(SpecError, match="more than once"):
        ExportSpec(inputs=(t, t), outputs=(TensorSpec("y", "float32", (1,)),))
    with pytest.raises(SpecError, match="both as input and output"):
        ExportSpec(inputs=(t,), outputs=(t,))


@pytest.mark.parametrize("bad", [dict(dtype="float33"), dict(shape=(1, -2)), dict(shape=(1, "bad name")), dict(name="")])
def test_tensor_spec_rejects_bad_fields(bad):
    kw = dict(name="x", dtype="float32", shape=(1, 3))
    kw.update(bad)
    with pytest.raises(SpecError):
        TensorSpec(**kw)


def test_check_feed_accepts_inside_and_rejects_outside_profile():
    spec = _spec()
    assert spec.check_feed({"image": np.zeros((2, 3, 64, 96), np.float32)}) == 0
    with pytest.raises(ShapeError, match="fit no shape profile"):
        spec.check_feed({"image": np.zeros((1, 3, 2000, 64), np.float32)})
    with pytest.raises(ShapeError, match="dim 1: expected 3"):
        spec.check_feed({"image": np.zeros((1, 4, 64, 64), np.float32)})
    with pytest.raises(ShapeError, match="expected rank 4"):
        spec.check_feed({"image": np.zeros((3, 64, 64), np.float32)})
    with pytest.raises(ShapeError, match="expected dtype float32, got float64"):
        spec.check_feed({"image": np.zeros((1, 3, 64, 64))})
    with pytest.raises(ShapeError, match=r"missing inputs \['image'\]; unexpected inputs \['img'\]"):
        spec.check_feed({"img": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(ShapeError, match="expected a numpy array"):
        spec.check_feed({"image": [[1.0]]})


def test_one_axis_name_has_one_size_across_inputs():
    spec = ExportSpec(
        inputs=(TensorSpec("a", "float32", ("batch", 4)), TensorSpec("b", "int64", ("batch",))),
        outputs=(TensorSpec("y", "float32", ("batch", 4)),),
        profiles=({"batch": (1, 2, 4)},),
    )
    with pytest.raises(ShapeError, match="axis 'batch' has size 2 in one input but 3"):
        spec.check_feed({"a": np.zeros((2, 4), np.float32), "b": np.zeros(3, np.int64)})


def test_second_profile_is_selected_when_first_does_not_hold():
    spec = _spec(profiles=({"batch": (1, 1, 1), "height": (32, 64, 64), "width": (32, 64, 64)},
                           {"batch": (1, 4, 8), "height": (64, 512, 1024), "width": (64, 512, 1024)}))
    assert spec.check_feed({"image": np.zeros((1, 3, 48, 48), np.float32)}) == 0
    assert spec.check_feed({"image": np.zeros((4, 3, 512, 256), np.float32)}) == 1


def test_round_trip_through_dict():
    spec = _spec()
    assert ExportSpec.from_dict(spec.to_dict()) == spec


def test_from_onnx_reads_names_dtypes_and_dynamic_dims(toy_model):
    model, spec = toy_model
    got = ExportSpec.from_onnx(model, profiles=spec.profiles)
    assert got.inputs == spec.inputs and got.outputs == spec.outputs and got.opset == 17


def test_parse_profile_cli_syntax():
    p = parse_profile("batch=1:1:8, height=32:736:1536")
    assert p.axes == {"batch": (1, 1, 8), "height": (32, 736, 1536)}
    for bad in ("batch=1:2", "batch", "=1:2:3", "batch=a:b:c", ""):
        with pytest.raises(SpecError):
            parse_profile(bad)


def test_batch_axis_is_the_axis_leading_every_input_and_output():
    assert _spec().batch_axis == "batch"
    static = ExportSpec(inputs=(TensorSpec("x", "float32", (1, 3)),), outputs=(TensorSpec("y", "float32", (1, 3)),))
    assert static.batch_axis is None                                  # no dynamic axis leads
    mixed = ExportSpec(inputs=(TensorSpec("x", "float32", ("batch", 3)), TensorSpec("n", "float32", ("pairs", 2))),
                       outputs=(TensorSpec("y", "float32", ("batch", 3)),),
                       profiles=({"batch": (1, 1, 4), "pairs": (1, 1, 4)},))
    assert mixed.batch_axis is None                                   # an input led by another axis
    scalar = ExportSpec(inputs=(TensorSpec("x", "float32", ("batch", 3)),), outputs=(TensorSpec("s", "float32", ()),),
                        profiles=({"batch": (1, 1, 4)},))
    assert scalar.batch_axis is None                                  # an output with no axis at all
