"""Bundles: atomic writes, checksums, schema versions; never a half-loaded bundle."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vkt.bundle import MANIFEST, SCHEMA_VERSION, Bundle, BundleWriter
from vkt.errors import BundleError


def test_written_bundle_verifies_and_exposes_spec(toy_bundle, toy_model):
    b = Bundle.load(toy_bundle)
    assert b.family == "generic" and b.spec().inputs == toy_model[1].inputs
    entry = b.entry("fp32 onnx")
    assert entry.bytes == (toy_bundle / "model.onnx").stat().st_size
    assert b.manifest["provenance"]["onnxruntime"]
    assert b.manifest["schema_version"] == SCHEMA_VERSION


def test_tampered_file_is_rejected(toy_bundle):
    p = toy_bundle / "model.onnx"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(toy_bundle)


def test_truncated_file_is_rejected(toy_bundle):
    p = toy_bundle / "model.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(BundleError, match="truncated"):
        Bundle.load(toy_bundle)


def test_missing_file_is_rejected(toy_bundle):
    (toy_bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(toy_bundle)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), "newer than this vkt"),
    (lambda m: m.update(schema="other"), "expected schema"),
    (lambda m: m.pop("files"), "'files' must be a list"),
    (lambda m: m["files"][0].update(path="../../etc/passwd"), "inside the bundle"),
    (lambda m: m["files"][0].update(component="ghost"), "unknown component"),
    (lambda m: m["components"]["model"]["spec"]["inputs"][0].update(dtype="float99"), "invalid spec"),
])
def test_bad_manifests_are_rejected(toy_bundle, edit, match):
    mp = toy_bundle / MANIFEST
    m = json.loads(mp.read_text())
    edit(m)
    mp.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match):
        Bundle.load(toy_bundle)


def test_not_json_and_not_a_bundle(tmp_path, toy_bundle):
    (toy_bundle / MANIFEST).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(toy_bundle)
    with pytest.raises(BundleError, match="not found"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path / "empty")


def test_writer_leaves_nothing_when_interrupted(tmp_path, toy_model):
    dest = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(dest, family="generic", task="tensor") as w:
            w.add_component("model", toy_model[1])
            w.add_file(toy_model[0].SerializeToString(), "model.onnx", role="fp32 onnx")
            raise RuntimeError("killed")
    assert not dest.exists()
    assert os.listdir(tmp_path) == []


def test_killed_writer_process_leaves_no_bundle(tmp_path):
    """SIGKILL in the middle of writing: the destination never appears, only a hidden temp folder."""
    code = f"""
import os, signal
from vkt.bundle import BundleWriter
from vkt.export.toy import toy_convnet
m, spec = toy_convnet()
with BundleWriter({str(tmp_path / 'b')!r}, family="generic", task="tensor") as w:
    w.add_component("model", spec)
    w.add_file(m.SerializeToString(), "model.onnx", role="fp32 onnx")
    os.kill(os.getpid(), signal.SIGKILL)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError):
        Bundle.load(tmp_path / "b")


def test_overwrite_requires_opt_in_and_refuses_foreign_folders(tmp_path, toy_bundle, toy_model):
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(toy_bundle, family="generic", task="tensor")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a bundle"):
        BundleWriter(foreign, family="generic", task="tensor", overwrite=True)
    with BundleWriter(toy_bundle, family="generic", task="tensor", overwrite=True) as w:
        w.add_component("model", toy_model[1])
        w.add_file(b"\x00" * 10, "notes.json", role="report")
    assert [e.path for e in Bundle.load(toy_bundle).entries] == ["notes.json"]


def test_add_file_updates_manifest_atomically(toy_bundle):
    b = Bundle.load(toy_bundle)
    b.add_file(b"plan-bytes", "model.plan", role="plan", meta={"precision": "fp32"})
    b2 = Bundle.load(toy_bundle)
    assert b2.entry("plan").meta == {"precision": "fp32"} and b2.path("plan").read_bytes() == b"plan-bytes"
    with pytest.raises(BundleError, match="unknown file role"):
        b.add_file(b"x", "x.bin", role="weights")
    with pytest.raises(BundleError, match="has no 'fp16 onnx' file"):
        b.path("fp16 onnx")


def test_fp16_export_is_close_to_fp32_and_keeps_float32_io(tmp_path, toy_onnx, toy_model):
    from vkt.export.onnx_import import import_onnx
    from vkt.runtime import make_runner

    b = import_onnx(toy_onnx, tmp_path / "b16", profile=toy_model[1].profiles[0], fp16=True)
    feed = toy_model[1].opt_feed()
    with make_runner(b, precision="fp32") as r32, make_runner(b, precision="fp16") as r16:
        a, h = r32.infer(feed)["features"], r16.infer(feed)["features"]
    assert h.dtype == np.float32
    # sigmoid outputs in [0, 1]; fp16 has an 11-bit mantissa, a few roundings deep: 1e-2 is ~20 ulps at 1.0
    np.testing.assert_allclose(h, a, atol=1e-2)
    import onnx

    m16 = onnx.load(str(b.path("fp16 onnx")))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m16.graph.initializer)


def test_fp16_casts_for_a_tensor_feeding_two_kept_ops_get_unique_names():
    """One tensor feeding two FP32-kept ops (here two CumSum) made the converter emit two Casts of one name."""
    import onnx
    from onnx import TensorProto, helper

    from vkt.export.fp16 import convert_fp16

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("CumSum", ["r", "axis"], ["a"], name="cs1"),
             helper.make_node("CumSum", ["r", "axis"], ["b"], name="cs2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor("axis", TensorProto.INT64, [], [1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx 1.23 writes IR 14, which onnxruntime 1.31 refuses
    m16 = convert_fp16(model)
    names = [n.name for n in m16.graph.node if n.name]
    assert len(names) == len(set(names))
    onnx.checker.check_model(m16)
    import onnxruntime as ort

    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    got = ort.InferenceSession(m16.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, 2 * np.cumsum(np.maximum(x, 0), axis=1), rtol=1e-3)


def test_each_precision_names_one_graph_role_and_the_engine_builder_reads_it_back():
    from vkt.bundle import PRECISION_ROLES, ROLES
    from vkt.engines import ROLE_PRECISION

    assert set(PRECISION_ROLES) == {"fp32", "fp16", "int8"}
    assert set(PRECISION_ROLES.values()) <= ROLES and len(set(PRECISION_ROLES.values())) == len(PRECISION_ROLES)
    assert {ROLE_PRECISION[r]: r for r in ROLE_PRECISION} == PRECISION_ROLES
