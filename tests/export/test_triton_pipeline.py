"""`vkt triton --pipeline`: the Python-backend model's config parses with Triton's schema, its model.py compiles,
and run under a stand-in for triton_python_backend_utils (BLS forwarded to onnxruntime) it answers what TextDetector does."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from vkt.cli.main import main
from vkt.errors import InputError
from vkt.export.triton import parse_config, write_triton_repo
from vkt.runtime import OrtRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2")
skimage = pytest.importorskip("skimage")
PAGE = Path(skimage.__file__).parent / "data" / "page.png"


def fake_pb_utils(repo: Path, calls: list) -> ModuleType:
    """triton_python_backend_utils as far as the pipeline uses it; BLS requests run the core model's ONNX with ORT."""
    m = ModuleType("triton_python_backend_utils")

    class TritonError:
        def __init__(self, msg: str):
            self._msg = msg

        def message(self) -> str:
            return self._msg

    class Tensor:
        def __init__(self, name: str, arr: np.ndarray):
            self._name, self._arr = name, arr

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._arr

    class InferenceResponse:
        def __init__(self, output_tensors: list, error: TritonError | None = None):
            self.output_tensors, self._error = output_tensors, error

        def has_error(self) -> bool:
            return self._error is not None

        def error(self) -> TritonError | None:
            return self._error

    class InferenceRequest:
        def __init__(self, model_name: str, requested_output_names: list, inputs: list):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self) -> InferenceResponse:
            calls.append((self.model_name, {t.name(): t.as_numpy().shape for t in self.inputs}))
            with OrtRunner(repo / self.model_name / "1" / "model.onnx") as r:
                out = r.infer({t.name(): t.as_numpy() for t in self.inputs})
            return InferenceResponse([Tensor(n, out[n]) for n in self.outputs])

    def get_tensor(obj, name):
        return next((t for t in (obj.inputs if hasattr(obj, "inputs") else obj.output_tensors) if t.name() == name), None)

    m.TritonError, m.Tensor, m.InferenceResponse, m.InferenceRequest = TritonError, Tensor, InferenceResponse, InferenceRequest
    m.get_input_tensor_by_name = m.get_output_tensor_by_name = get_tensor
    return m


class Request:
    def __init__(self, inputs: list):
        self.inputs = inputs


@pytest.fixture(scope="module")
def repo(tmp_path_factory, ppocr_det_bundle):
    root = tmp_path_factory.mktemp("triton")
    assert main(["triton", str(ppocr_det_bundle), "-o", str(root / "repo"), "--name", "det", "--pipeline"]) == 0
    return ppocr_det_bundle, root / "repo"


def test_pipeline_config_parses_with_tritons_schema(repo):
    from tritonclient.grpc import model_config_pb2 as mc

    _, r = repo
    cfg = parse_config((r / "det_pipeline" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("IMAGE", mc.TYPE_UINT8, [-1])]
    assert {o.name: list(o.dims) for o in cfg.output} == {"DETECTIONS": [1], "SCORES": [-1], "POLYGONS": [-1, 4, 2]}
    assert cfg.parameters["core_model"].string_value == "det"
    assert parse_config((r / "det" / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    py_compile.compile(str(r / "det_pipeline" / "1" / "model.py"), doraise=True)
    assert json.loads((r / "det_pipeline" / "vkt_manifest.json").read_text())["task"] == "text-detection"


def test_pipeline_model_equals_text_detector(repo, monkeypatch):
    from google.protobuf import json_format

    from vkt.runtime.textdet import TextDetector

    bundle, r = repo
    calls: list = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(r, calls))
    spec = importlib.util.spec_from_file_location("det_pipeline_model", r / "det_pipeline" / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    # Triton passes the config as JSON of the ModelConfig message.
    cfg = json_format.MessageToJson(parse_config((r / "det_pipeline" / "config.pbtxt").read_text()),
                                    preserving_proto_field_name=True)
    model.initialize({"model_config": cfg, "model_name": "det_pipeline", "model_version": "1",
                      "model_repository": str(r / "det_pipeline")})
    image = np.frombuffer(PAGE.read_bytes(), np.uint8)
    good, bad = model.execute([Request([mod.pb_utils.Tensor("IMAGE", image)]),
                               Request([mod.pb_utils.Tensor("IMAGE", np.frombuffer(b"garbage!", np.uint8))])])
    assert calls == [("det", {"x": (1, 3, 736, 1472)})]  # one BLS call, batch axis included
    assert not good.has_error() and "the body (8 bytes, starting with bytes 67 61 72 62 61 67 65 21) is not an image" in bad.error().message()
    out = {t.name(): t.as_numpy() for t in good.output_tensors}
    with TextDetector(bundle, threads=2) as det:
        want = det(str(PAGE))[0]
    assert len(want) == 45 and out["POLYGONS"].shape == (45, 4, 2)
    np.testing.assert_array_equal(out["POLYGONS"], np.stack(want.polygons))
    np.testing.assert_array_equal(out["SCORES"], want.scores)
    assert json.loads(out["DETECTIONS"][0])["detections"] == want.to_dict()["detections"]


def test_pipeline_refuses_tensor_bundles(toy_bundle, tmp_path):
    with pytest.raises(InputError, match="--pipeline serves bundles of tasks"):
        write_triton_repo(toy_bundle, tmp_path / "repo", pipeline=True)
    assert not (tmp_path / "repo").exists()  # refused before writing anything
