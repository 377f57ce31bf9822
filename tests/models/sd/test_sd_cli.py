"""`vkt export sd` from a diffusers folder, FP16 graphs, and the bad inputs test_sd_parity.py does not cover:
missing pipeline files (named), empty and overlong prompts (warned)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def sd_folder(torch1, tmp_path_factory):
    pytest.importorskip("diffusers")
    from vkt.models.sd.tiny import tiny_pipeline

    root = tmp_path_factory.mktemp("sdcli")
    tiny_pipeline(root / "tok", size=32).save_pretrained(str(root / "pipe"))
    return root / "pipe"


@pytest.fixture(scope="module")
def cli_bundle(sd_folder, tmp_path_factory):
    from vkt.cli.main import main

    out = tmp_path_factory.mktemp("sdcli-b") / "tiny.vkt"
    assert main(["export", "sd", str(sd_folder), "-o", str(out), "--max-batch", "2", "--min-size", "32", "--opt-size", "32",
                 "--max-size", "64", "--fp16"]) == 0
    return out


def test_cli_export_sd_writes_fp32_and_fp16(cli_bundle, capsys):
    from vkt.bundle import Bundle
    from vkt.runtime.txt2img import Txt2Img

    b = Bundle.load(cli_bundle)
    assert b.family == "sd" and b.components == ["text_encoder", "unet", "vae_decoder"]
    assert b.spec("unet").profiles[0].axes == {"batch": (1, 2, 4), "height": (4, 4, 8), "width": (4, 4, 8)}
    assert sorted(e.path for e in b.files("fp16 onnx")) == ["text_encoder.fp16.onnx", "unet.fp16.onnx", "vae_decoder.fp16.onnx"]
    kw = dict(height=32, width=32, steps=2, seed=3, output_type="float")
    with Txt2Img(b, threads=1, progress_bar=False) as p32, Txt2Img(b, threads=1, progress_bar=False, precision="fp16") as p16:
        a, h = np.stack(p32("a photo of the cats", **kw)), np.stack(p16("a photo of the cats", **kw))
    assert np.isfinite(h).all() and a.shape == h.shape == (1, 32, 32, 3)
    assert float(np.abs(a - h).max()) < 0.05  # fp16 weights: close, not equal
    assert not np.array_equal(a, h)


def test_cli_export_sd_refuses_existing_and_names_missing_files(sd_folder, cli_bundle, tmp_path, capsys):
    from vkt.cli.main import main

    assert main(["export", "sd", str(sd_folder), "-o", str(cli_bundle), "--max-size", "64", "--min-size", "32",
                 "--opt-size", "32"]) == 2
    assert "exists" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(sd_folder, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "vae" / "config.json").unlink()
    assert main(["export", "sd", str(broken), "-o", str(tmp_path / "b.vkt")]) == 2
    err = capsys.readouterr().err
    assert "unet/diffusion_pytorch_model.safetensors" in err and "vae/config.json" in err
    shutil.rmtree(broken / "tokenizer")
    assert main(["export", "sd", str(broken), "-o", str(tmp_path / "b.vkt")]) == 2
    assert "lacks ['tokenizer']" in capsys.readouterr().err
    assert main(["export", "sd", str(tmp_path / "nowhere"), "-o", str(tmp_path / "c.vkt")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["export", "sd", str(sd_folder), "-o", str(tmp_path / "d.vkt"), "--min-size", "40"]) == 2
    assert "min_size=40 must be a multiple of 16" in capsys.readouterr().err


def test_empty_and_overlong_prompts_warn(cli_bundle, caplog):
    from vkt.runtime.txt2img import Txt2Img

    long = " ".join(["cat"] * 90) + " tail"
    with Txt2Img(cli_bundle, threads=1, progress_bar=False) as pipe, caplog.at_level(logging.WARNING, logger="vkt"):
        images = pipe(["", long], height=32, width=32, steps=1, seed=0)
    assert len(images) == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert any("prompt 0 is empty" in m for m in msgs)
    # 90 x "cat" + "tail" (4 byte tokens in the tiny vocab) = 94; the dropped words are shown as text
    assert any(m.startswith("prompt 1 is 94 tokens") and m.endswith("'" + " ".join(["cat"] * 15) + " tail'") for m in msgs)


def test_profile_too_small_for_guided_batch(cli_bundle):
    """max_batch 2 -> UNet profile up to 4: 3 guided images need 6 (sequential CFG fits: 3 <= 4)."""
    from vkt.errors import InputError
    from vkt.runtime.txt2img import Txt2Img

    with pytest.raises(InputError, match=r"2 x 3 = 6.*at most 4.*cfg='sequential'"):
        Txt2Img(cli_bundle, threads=1, progress_bar=False)("a cat", num_images_per_prompt=3, height=32, width=32, steps=1)
    out = Txt2Img(cli_bundle, threads=1, progress_bar=False, cfg="sequential")("a cat", num_images_per_prompt=3,
                                                                               height=32, width=32, steps=1, seed=0)
    assert len(out) == 3


def test_cli_export_sd_int8_unet(sd_folder, tmp_path):
    from vkt.bundle import Bundle
    from vkt.cli.main import main
    from vkt.runtime.txt2img import Txt2Img

    out = tmp_path / "int8.vkt"
    assert main(["export", "sd", str(sd_folder), "-o", str(out), "--max-batch", "1", "--min-size", "32", "--opt-size", "32",
                 "--max-size", "32", "--int8", "--calib-steps", "2", "--no-ort-fused"]) == 0
    b = Bundle.load(out)
    assert not [e for e in b.files("fp32 onnx") if e.path.endswith(".ort.onnx")]  # --no-ort-fused
    qdq = b.files("int8 qdq onnx")
    assert {e.component for e in qdq} == {"unet"} and {e.meta["placement"] for e in qdq} == {"ort", "trt"}
    kw = dict(height=32, width=32, steps=2, seed=3, output_type="float")
    with Txt2Img(b, threads=1, progress_bar=False) as p32, Txt2Img(b, threads=1, progress_bar=False, precision="int8") as p8:
        a, q = np.stack(p32("a photo of the cats", **kw)), np.stack(p8("a photo of the cats", **kw))
    assert np.isfinite(q).all() and a.shape == q.shape
    assert not np.array_equal(a, q)  # the UNet really ran quantized


def test_vkt_bench_times_whole_generations_of_an_sd_bundle(cli_bundle, tmp_path, capsys):
    import json

    from vkt.cli.main import main

    out = tmp_path / "rows.jsonl"
    assert main(["bench", str(cli_bundle), "--shape", "height=32,width=32", "-B", "1", "-B", "2", "--iters", "2",
                 "--warmup", "1", "--steps", "2", "--threads", "1", "--json", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert [(r["target"], r["case"], r["batch"], r["n"]) for r in rows] == [
        ("txt2img-ort-fp32", "B=1 32x32", 1, 2), ("txt2img-ort-fp32", "B=2 32x32", 2, 2)]
    assert all(r["p50_ms"] > 0 and r["status"] == "ok" for r in rows)
    assert rows[0]["info"]["steps"] == 2 and "VAE decoder" in rows[0]["includes"]
    for args, match in ((["--steps", "0"], "--steps must be >= 1, got 0"), (["--shape", "height=32,frames=2"], "height=PIXELS"),
                        (["-t", "ort-raw"], "end to end")):
        assert main(["bench", str(cli_bundle), "--iters", "1", "--quiet", *args]) == 2
        assert match in capsys.readouterr().err
