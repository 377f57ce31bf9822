"""Triton model repository: every config.pbtxt parses with Triton's own protobuf schema and says what we mean."""

import pytest

from vkt.bundle import Bundle
from vkt.cli.main import main
from vkt.errors import InputError
from vkt.export.triton import TritonOptions, config_pbtxt, parse_config, write_triton_repo
from vkt.specs import ExportSpec, TensorSpec

pytest.importorskip("tritonclient.grpc.model_config_pb2")


def test_onnx_model_uses_batching_form_with_dynamic_batching(toy_bundle, tmp_path):
    d = write_triton_repo(toy_bundle, tmp_path / "repo", opts=TritonOptions(max_queue_delay_us=500))
    cfg = parse_config((d / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8  # the profile's max batch
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("image", [3, -1, -1])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("features", [8, -1, -1])]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
    assert (d / "1" / "model.onnx").read_bytes() == Bundle.load(toy_bundle).path("fp32 onnx").read_bytes()


def test_plan_with_two_profiles_gets_one_instance_group_per_profile(toy_bundle, tmp_path):
    b = Bundle.load(toy_bundle)
    spec = b.spec().with_profiles({"batch": (1, 1, 2), "height": (16, 32, 64), "width": (16, 32, 64)},
                                  {"batch": (1, 4, 16), "height": (64, 128, 256), "width": (64, 128, 256)})
    text = config_pbtxt("toy", spec, TritonOptions(backend="tensorrt"))
    cfg = parse_config(text)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert [list(g.profile) for g in cfg.instance_group] == [["0"], ["1"]]
    from tritonclient.grpc import model_config_pb2 as mc

    assert all(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group)


def test_python_backend_serves_the_onnx_with_vkts_model_py(toy_bundle, tmp_path):
    """--backend python: the onnxruntime form's tensors and batching, backend "python", model.py beside model.onnx."""
    onnx_cfg = parse_config((write_triton_repo(toy_bundle, tmp_path / "a") / "config.pbtxt").read_text())
    d = write_triton_repo(toy_bundle, tmp_path / "b", opts=TritonOptions(backend="python", threads=2))
    cfg = parse_config((d / "config.pbtxt").read_text())
    from tritonclient.grpc import model_config_pb2 as mc

    assert cfg.backend == "python" and not cfg.platform
    assert (cfg.input, cfg.output, cfg.max_batch_size, cfg.dynamic_batching) == (
        onnx_cfg.input, onnx_cfg.output, onnx_cfg.max_batch_size, onnx_cfg.dynamic_batching)
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert cfg.parameters["intra_op_threads"].string_value == "2"
    assert sorted(p.name for p in (d / "1").iterdir()) == ["model.onnx", "model.py"]
    assert (d / "1" / "model.onnx").read_bytes() == Bundle.load(toy_bundle).path("fp32 onnx").read_bytes()
    compile((d / "1" / "model.py").read_text(), "model.py", "exec")


def test_model_without_shared_batch_axis_uses_full_dims():
    spec = ExportSpec(inputs=(TensorSpec("ids", "int64", (1, 77)),), outputs=(TensorSpec("h", "float32", (1, 77, 16)),))
    cfg = parse_config(config_pbtxt("enc", spec, TritonOptions()))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 77] and not cfg.HasField("dynamic_batching")


@pytest.mark.parametrize("kw, match", [
    (dict(name="../etc"), "no path parts"),
    (dict(opts=TritonOptions(backend="tensorrt")), "no fp32 plan"),
    (dict(opts=TritonOptions(precision="int8")), "no 'int8 qdq onnx' file"),
    (dict(opts=TritonOptions(max_batch_size=64)), "exceeds the profile's max batch 8"),
    (dict(opts=TritonOptions(kind="KIND_TPU")), "instance kind"),
    (dict(opts=TritonOptions(backend="pytorch")), "'onnxruntime', 'tensorrt' or 'python', got 'pytorch'"),
    (dict(opts=TritonOptions(backend="python", threads=-1)), "threads must be >= 0"),
    (dict(opts=TritonOptions(threads=2)), "threads applies to backend 'python'.*got backend 'onnxruntime'"),
])
def test_bad_requests(toy_bundle, tmp_path, kw, match):
    from vkt.errors import VktError

    with pytest.raises(VktError, match=match):
        write_triton_repo(toy_bundle, tmp_path / "repo", **kw)


def test_cli_writes_repo_and_refuses_to_clobber(toy_bundle, tmp_path):
    repo = tmp_path / "repo"
    assert main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy"]) == 0
    parse_config((repo / "toy" / "config.pbtxt").read_text())
    assert main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy"]) == 2
    assert main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy", "--force"]) == 0
    with pytest.raises(InputError):
        write_triton_repo(toy_bundle, repo, name="toy")
