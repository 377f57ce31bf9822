"""The gate's speed-up is the one `vkt bench` re-times: same FP32 graph and runner, same settings."""

from __future__ import annotations

import pytest
from calib_helpers import feeds

pytest.importorskip("openvino")  # the test extra installs it


def test_openvino_gate_times_the_bundles_fp32_file_as_vkt_bench_runs_it(toy_bundle):
    """The gate timed a rewritten FP32 of its own on OpenVINO (HardSwish fused there only) while `vkt bench -t ov:fp32`
    times the bundle's file: two graphs. Now both are the bundle's FP32 on the runner `vkt bench` builds."""
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.runtime import make_runner

    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort", "openvino")), eval_samples=0, show_progress=False)
    sens = feeds(((1, 3, 16, 16),), seed=3)
    section = gate_bundle(toy_bundle, lambda factory: 1.0, GateConfig(placement="openvino", steps=(0,), iters=2,
                                                                      ranking="prefix", min_speedup=0),
                          latency_feed=sens[0], show_progress=False)
    fp32 = section["openvino_gate"]["steps"][0]["timing"]["fp32_runner"]
    bench = make_runner(toy_bundle, "ov", "fp32").describe()  # what `vkt bench -t ov:fp32` builds
    assert fp32["backend"] == "ov" and fp32["name"] == bench["name"] and fp32.get("precision") == bench["precision"]
