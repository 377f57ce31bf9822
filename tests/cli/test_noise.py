"""What the CLI prints is for people: model constraints as one error line, no Python internals, no duplicate keys."""

from __future__ import annotations

import pytest

from vkt.bundle import Bundle
from vkt.cli.main import main


def test_bench_size_off_the_stride_is_one_error_line_before_running(toy_bundle, capsys):
    Bundle.load(toy_bundle).update(preprocess={"resize": {"mode": "limit_side", "limit_type": "min",
                                                          "limit_side_len": 64, "round_to": 32}})
    assert main(["bench", str(toy_bundle), "--shape", "height=40,width=64", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "height must be a multiple of 32" in err and "e.g. 32 or 64" in err
    assert main(["bench", str(toy_bundle), "--shape", "height=96,width=64", "--iters", "1", "--warmup", "0", "-q"]) == 0


@pytest.mark.parametrize("args, match", [
    (["bench", "{b}", "--iters", "1", "--warmup", "-1"], "warmup >= 0"),
    (["bench", "{b}", "--threads", "0", "--iters", "1"], "threads"),
])
def test_messages_carry_no_python_internals(toy_bundle, capsys, args, match):
    assert main([a.format(b=toy_bundle) for a in args]) == 2
    err = capsys.readouterr().err
    assert match in err
    for internal in ("BenchConfig(", "or None", "=True", "None"):
        assert internal not in err, err


def test_sqnr_within_rounding_of_zero_reads_0_dB_with_what_it_means(capsys):
    """A detector's map that INT8 flattens to ~0 gives noise == signal: 10*log10(1) = 0 dB, computed as -2e-6.
    It is printed as 0.0 dB (not -0.0), with the images it was measured on and what such a value means."""
    from types import SimpleNamespace

    import numpy as np

    from vkt.calibration.report import sqnr_db
    from vkt.cli.quantize import print_calibration

    ref = np.linspace(0, 1, 1000) ** 8
    flat = sqnr_db(ref, -1e-6 * ref)  # INT8 output ~ 0 everywhere
    assert -1e-4 < flat < 0
    place = {"path": "model.int8.ort.onnx", "fused_int8_ops": 71, "float_compute_ops": 2, "output_sqnr_db": {"maps": flat}}
    section = {"method": "percentile", "samples": 8, "eval_samples": 2, "table": {"sha256": "0" * 64},
               "placements": {"ort": place, "trt": {**place, "output_sqnr_db": {"maps": 31.25}}}}
    print_calibration(SimpleNamespace(name="det"), section)
    out = " ".join(capsys.readouterr().out.split())
    assert "-0.0" not in out and "maps 0.0 dB" in out and "maps 31.2 dB" in out
    assert "on the first 2 calibration image(s)" in out and "as large as the output itself" in out
