"""The OpenVINO backend from the CLI and the server: vkt bench -t ov, run/eval --backend ov, serve, doctor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vkt.cli.main import main

pytest.importorskip("openvino")


def _rows(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_bench_ort_beside_ov(toy_bundle, capsys):
    assert main(["bench", str(toy_bundle), "-t", "ort", "-t", "ov", "--threads", "1", "--iters", "2", "--warmup", "1",
                 "--shape", "height=32,width=48", "--json", "-"]) == 0
    out = capsys.readouterr().out
    rows = {r["target"]: r for r in _rows(out)}
    assert set(rows) == {"ort-fp32", "ov-fp32"} and all(r["status"] == "ok" for r in rows.values())
    info = rows["ov-fp32"]["info"]
    assert (info["backend"], info["device"], info["threads"], info["inference_precision"]) == ("ov", "CPU", 1, "f32")
    assert "ov-fp32: OvRunner.infer()" in out  # what the figure includes


def test_bench_ov_int8(toy_bundle, capsys):
    """An old INT8 bundle (ort/trt placements only): -t ov:int8 is one error line; with an openvino placement it
    runs, and the default targets include it."""
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle

    rng = np.random.default_rng(0)
    quantize_bundle(toy_bundle, [{"image": rng.random((1, 3, 32, 32), np.float32)} for _ in range(3)],
                    Int8Config(targets=("ort", "trt")), eval_samples=0, show_progress=False)
    capsys.readouterr()  # its log lines
    assert main(["bench", str(toy_bundle), "-t", "ov:int8", "--iters", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--target openvino" in err[0] and "ort, trt" in err[0]
    quantize_bundle(toy_bundle, [{"image": rng.random((1, 3, 32, 32), np.float32)} for _ in range(3)],
                    Int8Config(targets=("ort", "openvino")), eval_samples=0, show_progress=False)
    capsys.readouterr()
    assert Bundle.load(toy_bundle).entry("int8 qdq onnx", placement="openvino").path == "model.int8.openvino.onnx"
    assert main(["bench", str(toy_bundle), "--iters", "1", "--warmup", "0", "--shape", "height=32,width=32",
                 "--json", "-", "-q"]) == 0
    rows = {r["target"]: r for r in _rows(capsys.readouterr().out)}
    assert list(rows) == ["ort-fp32", "ort-int8", "ov-int8"] and rows["ov-int8"]["status"] == "ok"
    assert rows["ov-int8"]["info"]["precision"] == "int8"
    assert rows["ov-int8"]["info"]["compute"] == {"Convolution": {"u8": 6}}  # every conv of the toy on integers


@pytest.fixture(scope="module")
def textdet_bundle(tmp_path_factory) -> Path:
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    return ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("ov-cli") / "det.vkt")


def test_run_and_eval_with_ov_agree_with_ort(textdet_bundle, tmp_path, capsys):
    import skimage

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(Path(skimage.__file__).parent / "data" / "page.png", inp / "page.png")
    for backend in ("ort", "ov", "auto"):
        assert main(["run", str(textdet_bundle), str(inp), "-o", str(tmp_path / backend), "--backend", backend,
                     "--threads", "1", "--no-draw"]) == 0
    ort_dets, ov_dets, auto_dets = (json.loads((tmp_path / b / "page.json").read_text())["detections"]
                                    for b in ("ort", "ov", "auto"))
    assert len(ort_dets) > 20 and len(auto_dets) == len(ort_dets)
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())  # what "auto" measured and took
    choice = summary["backend_choice"]
    assert set(choice["ms"]) == {"ort", "ov"} and summary["backend"] == choice["chosen"] == min(choice["ms"], key=choice["ms"].get)
    assert json.loads((tmp_path / "ov" / "summary.json").read_text())["backend"] == "ov"
    # onnxruntime's boxes as ICDAR labels: OpenVINO must find them all and nothing else
    lines = [",".join(str(int(round(v))) for pt in d["polygon"] for v in pt) + ",x" for d in ort_dets]
    (inp / "gt_page.txt").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["eval", str(textdet_bundle), "--data", str(inp), "--backend", "ov", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "ov" and result["hmean"] == 1.0 and len(ov_dets) == len(ort_dets)


def test_server_serves_an_ov_model(toy_bundle):
    th = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'vkt[test]')")
    from vkt.runtime import make_runner
    from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 40)).astype(np.float32)
    with make_runner(toy_bundle, "ort") as ref:
        want = ref.infer({"image": x})["features"]
    cfg = ServerConfig(port=0, timeout_s=10.0, warmup=False)
    with InferenceServer(models_from_bundles([toy_bundle], backend="ov", threads=1), cfg) as srv:
        c = th.InferenceServerClient(srv.url[7:])
        name = c.get_model_repository_index()[0]["name"]
        config = c.get_model_config(name)
        assert config["backend"] == "openvino" and config["instance_group"][0]["kind"] == "KIND_CPU"
        inp = th.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        got = c.infer(name, [inp]).as_numpy("features")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_doctor_reports_openvino(capsys):
    import openvino as ov

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = next(b for b in report["backends"] if b["backend"] == "ov")
    assert row["ok"] is True and row["devices"] == list(ov.Core().available_devices)
    assert row["version"] == ov.__version__.split("-")[0]
    assert {p["package"]: p["version"] for p in report["packages"]}["openvino"] == row["version"]


@pytest.mark.parametrize("argv, match", [
    (["txt2img", "{missing}", "a cat", "--backend", "unet=nope"], "unknown backend 'nope' for component 'unet'"),
    (["txt2img", "{missing}", "a cat", "--backend", "unt=ov"], "unknown component 'unt'"),
    (["run", "{bundle}", "{image}", "--backend", "model=ov,model=ort"], "names component 'model' twice"),
    (["run", "{bundle}", "{image}", "--backend", "unet=ov"], "unknown component 'unet'.*components are model"),
])
def test_bad_backend_choice_is_one_error_line(toy_bundle, tmp_path, capsys, argv, match):
    import re

    import cv2

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    argv = [a.format(missing=tmp_path / "no-bundle", bundle=toy_bundle, image=image) for a in argv]
    argv += ["-o", str(tmp_path / ("out.png" if argv[0] == "txt2img" else "out"))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and re.search(match, err[0]), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.png").exists()
