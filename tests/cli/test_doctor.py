"""vkt doctor reports versions and backends consistent with what is importable here."""

import importlib.util
import json
from importlib import metadata

from vkt.cli.main import main


def test_doctor_json_matches_the_environment(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    versions = {p["package"]: p["version"] for p in report["packages"]}
    assert versions["onnxruntime"] == metadata.version("onnxruntime")
    backends = {b["backend"]: b for b in report["backends"]}
    assert backends["ort"]["ok"] is True
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert backends["ort-cuda"]["ok"] is (has_cuda and bool(report["gpus"]))
    if not backends["ort-cuda"]["ok"]:
        assert backends["ort-cuda"]["why"]  # always says why not
    rtx = next(v for k, v in backends.items() if "tensorrt-rtx" in k)
    assert rtx["ok"] is (importlib.util.find_spec("tensorrt_rtx") is not None)
