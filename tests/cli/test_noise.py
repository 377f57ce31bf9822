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
