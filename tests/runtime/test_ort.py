"""OrtRunner: parity with a raw InferenceSession, input validation, loud provider failures."""

import numpy as np
import pytest

from vkt.errors import BackendError, ModelError, ShapeError
from vkt.runtime import OrtRunner, make_runner


def test_matches_raw_session_and_numpy_reference(toy_onnx, toy_model):
    import onnxruntime as ort

    feed = toy_model[1].opt_feed()
    raw = ort.InferenceSession(str(toy_onnx), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with OrtRunner(toy_onnx) as r:
        out = r.infer(feed)["features"]
    np.testing.assert_array_equal(out, raw)
    assert out.shape == (1, 8, 64, 64) and 0 <= out.min() and out.max() <= 1  # sigmoid head


def test_spec_read_from_session_names_unnamed_axes(toy_onnx):
    with OrtRunner(toy_onnx) as r:
        assert r.spec.input_names == ["image"]
        assert r.spec.inputs[0].shape == ("batch", 3, "height", "width")


def test_bundle_runner_enforces_profile(toy_bundle):
    with make_runner(toy_bundle) as r:
        with pytest.raises(ShapeError, match="fit no shape profile"):
            r.infer({"image": np.zeros((1, 3, 512, 64), np.float32)})
        assert r.infer({"image": np.zeros((2, 3, 16, 256), np.float32)})["features"].shape == (2, 8, 16, 256)


def test_infer_before_activate_is_an_error(toy_onnx):
    with pytest.raises(BackendError, match="not active"):
        OrtRunner(toy_onnx).infer({})


def test_cuda_provider_missing_fails_loudly(toy_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        OrtRunner(toy_onnx, providers=("cuda",)).activate()


def test_silent_fallback_is_detected(toy_onnx, monkeypatch):
    """onnxruntime-gpu drops CUDA without an error when its libraries are missing: vkt must notice."""
    import onnxruntime as ort

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    def fake_session(src, sess_options=None, providers=None):
        return real(src, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with pytest.raises(BackendError, match="did not load CUDAExecutionProvider"):
        OrtRunner(toy_onnx, providers=("cuda",)).activate()


@pytest.mark.parametrize("kw, exc, match", [
    (dict(providers=("rocm",)), BackendError, "unknown onnxruntime provider"),
    (dict(threads=0), BackendError, "threads must be a positive integer"),
    (dict(graph_optimization="max"), BackendError, "graph_optimization"),
    (dict(session_config={"session.intra_op.allow_spinning": 0}), BackendError, "session_config must map strings"),
    (dict(session_config=[("a", "b")]), BackendError, "session_config must map strings"),
])
def test_bad_options(toy_onnx, kw, exc, match):
    with pytest.raises(exc, match=match):
        OrtRunner(toy_onnx, **kw)


def test_session_config_reaches_onnxruntime(toy_onnx, toy_bundle, toy_model):
    """Entries are applied to the session: spinning off changes no output; an entry onnxruntime acts on at load
    time (read the file as ORT format) makes the load fail; make_runner passes them through."""
    feed = toy_model[1].opt_feed()
    with OrtRunner(toy_onnx) as plain, OrtRunner(toy_onnx, session_config={"session.intra_op.allow_spinning": "0"}) as r:
        np.testing.assert_array_equal(r.infer(feed)["features"], plain.infer(feed)["features"])
        assert r.describe()["session_config"] == {"session.intra_op.allow_spinning": "0"}
    with pytest.raises(ModelError, match="cannot load"):
        OrtRunner(toy_onnx, session_config={"session.load_model_format": "ORT"}).activate()
    r = make_runner(toy_bundle, session_config={"session.load_model_format": "ORT"})
    assert r.session_config == {"session.load_model_format": "ORT"}
    with pytest.raises(ModelError, match="cannot load"):
        r.activate()


def test_missing_and_corrupt_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OrtRunner(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not protobuf at all" * 10)
    with pytest.raises(ModelError, match="cannot load"):
        OrtRunner(bad).activate()


def test_unknown_backend_and_precision(toy_bundle):
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        make_runner(toy_bundle, backend="tpu")
    with pytest.raises(BackendError, match="unknown precision 'int4'"):
        make_runner(toy_bundle, precision="int4")


def test_run_error_is_raised_once_not_printed_raw_by_onnxruntime(capfd):
    """A shape clash inside the graph: the BackendError carries onnxruntime's message; onnxruntime itself prints
    nothing (it used to log the same error first, in raw terminal colours)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "clash",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with OrtRunner(m.SerializeToString()) as r:
        with pytest.raises(BackendError, match="onnxruntime failed to run .*Add"):
            r.infer({"a": np.zeros(3, np.float32), "b": np.zeros(4, np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err
