"""Stable Diffusion end to end at tiny scale: export three random components, run vkt's torch-free
Txt2Img on onnxruntime, and compare with diffusers' StableDiffusionPipeline on the same latents.

Tolerance: images (float, [0, 1]) within 1e-4 absolute, uint8 within 1 level. Why that is tight
and still safe: each exported graph matches torch to ~1e-6 of its output's magnitude (checked at
export); the schedulers match diffusers' to < 1e-5 relative (tests/runtime/test_schedulers.py);
4 steps with guidance 7.5 amplify the UNet difference by at most ~2 g + 1 per step on latents of
magnitude ~1, and the VAE maps latents to [0, 1] with gain < 1 here. The measured worst case is
~1e-6 (float); a real bug (wrong timestep, wrong guidance order, scaling not baked) moves pixels
by 1e-2 or more. uint8 may differ by 1 where a value sits on a rounding boundary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vkt.errors import BundleError, InputError

pytestmark = pytest.mark.torch

H = W = 64  # tiny VAE: 4 blocks -> scale 8 (as SD); tiny UNet: 2 blocks -> pixel multiple 16
STEPS = 4
PROMPTS = ["a photo of the cats", "the cat"]
NEGATIVES = ["ugly photo", ""]
TOL_FLOAT = 1e-4


@pytest.fixture(scope="module")
def tiny_pipe(torch1, tmp_path_factory):
    """A random StableDiffusionPipeline: CLIP text encoder (2 layers, width 16), UNet (8, 16), VAE (4 x 8 channels)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from vkt.models.sd.tiny import tiny_pipeline

    # SD 1.x's DDIM schedule; the tiny vocabulary is written beside it (vkt.models.sd.tiny, shared with Dreambooth's tests)
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "tokenizer", size=H, seed=0)


@pytest.fixture(scope="module")
def bundle(tiny_pipe, tmp_path_factory):
    """Export from a local diffusers folder (the path users take), max 2 images per call."""
    from vkt.models.sd import SDProfile, export_sd

    root = tmp_path_factory.mktemp("sd")
    tiny_pipe.save_pretrained(str(root / "pipe"))
    report = export_sd(root / "pipe", root / "tiny-sd", profile=SDProfile(max_batch=2, min_size=32, opt_size=64, max_size=64))
    assert set(report.parity) == {"text_encoder", "unet", "vae_decoder"}
    assert max(report.parity.values()) < 1e-4, report.parity
    return report.bundle


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal((len(PROMPTS), 4, H // 8, W // 8)).astype(np.float32)


def _reference(pipe, torch, bundle, latents, scheduler: str | None, guidance: float):
    """diffusers' pipeline with the scheduler built from the bundle's own scheduler_config.json."""
    import diffusers

    classes = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm++2m": "DPMSolverMultistepScheduler",
               "pndm": "PNDMScheduler"}
    config = json.loads((bundle / "scheduler" / "scheduler_config.json").read_text())
    saved = pipe.scheduler
    pipe.scheduler = getattr(diffusers, classes[scheduler or "ddim"]).from_config(config)
    try:
        return pipe(PROMPTS, negative_prompt=NEGATIVES, height=H, width=W, num_inference_steps=STEPS,
                    guidance_scale=guidance, latents=torch.from_numpy(latents), output_type="np").images
    finally:
        pipe.scheduler = saved


def test_bundle_layout(bundle):
    from vkt.bundle import Bundle

    b = Bundle.load(bundle)
    assert (b.family, b.task) == ("sd", "text-to-image")
    assert b.components == ["text_encoder", "unet", "vae_decoder"]
    unet = b.spec("unet")
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states"]
    assert unet.input("timestep").shape == ("batch",) and unet.input("timestep").dtype == "float32"
    assert unet.profiles[0].axes == {"batch": (1, 2, 4), "height": (4, 8, 8), "width": (4, 8, 8)}  # 2 x max_batch
    assert b.spec("text_encoder").profiles[0].axes["batch"] == (1, 2, 4)
    assert b.spec("vae_decoder").profiles[0].axes["batch"] == (1, 1, 2)
    assert b.spec("text_encoder").input("input_ids").dtype == "int32"
    assert {Path(e.path).name for e in b.files("tokenizer", "text_encoder")} >= {"tokenizer_config.json"}
    cfg = json.loads(b.path("scheduler config", "unet").read_text())
    assert cfg["_class_name"] == "DDIMScheduler" and cfg["steps_offset"] == 1
    vae = b.manifest["components"]["vae_decoder"]
    assert vae["scaling_baked"] is True and vae["scaling_factor"] == pytest.approx(0.18215) and vae["vae_scale_factor"] == 8
    assert b.manifest["postprocess"]["type"] == "sd-vae"


def test_ort_graphs_carry_the_cpu_rewrites(bundle):
    """The onnxruntime graphs (which test_txt2img_matches_diffusers runs) hold the sub-pixel up-samplers and
    flash-attention MultiHeadAttention, and match the plain graphs; TensorRT's plain graphs keep Resize + Conv."""
    import onnx

    from vkt.bundle import Bundle
    from vkt.models.sd.optimize import max_rel_diff

    b = Bundle.load(bundle)
    for comp, rewrites in (("unet", {"subpixel_upsample_conv": 1, "self_attention_mha": 4}),  # 4 transformer blocks
                           ("vae_decoder", {"subpixel_upsample_conv": 3})):
        e = b.entry("fp32 onnx", comp, placement="ort")
        assert e.path == f"{comp}.ort.onnx" and e.meta["rewrites"] == rewrites, e.meta
        ops = [n.op_type for n in onnx.load(str(b.root / e.path)).graph.node]
        assert "Resize" not in ops and ops.count("DepthToSpace") == rewrites["subpixel_upsample_conv"]
        assert "Attention" not in ops
        assert "Resize" in [n.op_type for n in onnx.load(str(b.path("fp32 onnx", comp))).graph.node]
        assert max_rel_diff(b.path("fp32 onnx", comp), b.root / e.path, b.spec(comp)) < 1e-5


@pytest.mark.parametrize("scheduler, guidance", [(None, 7.5), ("euler", 7.5), ("dpm++2m", 7.5), ("pndm", 7.5), (None, 1.0)])
def test_txt2img_matches_diffusers(bundle, tiny_pipe, torch1, latents, scheduler, guidance):
    from vkt.runtime.txt2img import Txt2Img

    with Txt2Img(bundle, scheduler=scheduler, threads=1, progress_bar=False) as pipe:
        got = pipe(PROMPTS, negative_prompt=NEGATIVES, height=H, width=W, steps=STEPS, guidance_scale=guidance,
                   latents=latents, output_type="float")
        got_u8 = pipe(PROMPTS, negative_prompt=NEGATIVES, height=H, width=W, steps=STEPS, guidance_scale=guidance,
                      latents=latents)
    want = _reference(tiny_pipe, torch1, bundle, latents, scheduler, guidance)  # [2, H, W, 3] float in [0, 1]
    got = np.stack(got)
    assert got.shape == want.shape == (2, H, W, 3) and got.dtype == np.float32
    diff = float(np.abs(got - want).max())
    print(f"parity {scheduler or 'ddim'} g={guidance}: max abs {diff:.2e}")  # shown with pytest -s
    assert diff <= TOL_FLOAT, f"max abs difference {diff:.2e} > {TOL_FLOAT}"
    assert float(want.std()) > 1e-2  # the comparison is not between two flat images
    want_u8 = (want * 255).round().astype(np.uint8)
    assert all(im.dtype == np.uint8 and im.shape == (H, W, 3) for im in got_u8)
    assert int(np.abs(np.stack(got_u8).astype(int) - want_u8).max()) <= 1


class _Spy:
    """Records the batch size of every UNet call."""

    def __init__(self, runner):
        self.runner, self.batches = runner, []
        self._infer = runner.infer

    def __call__(self, feed, check=True):
        self.batches.append(feed["sample"].shape[0])
        return self._infer(feed, check)


def test_batched_cfg_equals_two_calls(bundle, latents):
    from vkt.runtime.txt2img import Txt2Img

    out = {}
    for mode in ("batched", "sequential"):
        pipe = Txt2Img(bundle, scheduler="dpm++2m", threads=1, cfg=mode, progress_bar=False)
        spy = _Spy(pipe.runners["unet"])
        pipe.runners["unet"].infer = spy
        res = pipe(PROMPTS, negative_prompt=NEGATIVES, height=H, width=W, steps=STEPS, guidance_scale=5.0,
                   latents=latents, output_type="float")
        out[mode] = (np.stack(res), res.latents, spy.batches, res.timings)
        pipe.close()
    assert out["batched"][2] == [4] * STEPS  # one call at 2B per step
    assert out["sequential"][2] == [2] * (2 * STEPS)  # two calls at B
    assert len(out["batched"][3].unet) == STEPS and out["batched"][3].text_encoder > 0 and out["batched"][3].vae > 0
    np.testing.assert_allclose(out["batched"][1], out["sequential"][1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["batched"][0], out["sequential"][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("slow_batch, want", [(4, "sequential"), (2, "batched")])
def test_cfg_auto_keeps_the_faster_mode_on_cpu(bundle, latents, slow_batch, want):
    """cfg="auto" on onnxruntime CPU times both guidance modes and keeps the faster: UNet calls at the
    ``slow_batch`` size are made 30 ms slower, so the other mode must win; images stay the same."""
    import time

    from vkt.runtime.txt2img import AUTO_REFRESH, AUTO_SAMPLES, Txt2Img

    pipe = Txt2Img(bundle, scheduler="ddim", threads=1, progress_bar=False)
    assert pipe.cfg_mode == "auto"
    spy = _Spy(pipe.runners["unet"])

    def slowed(feed, check=True):
        if feed["sample"].shape[0] == slow_batch:
            time.sleep(0.03)
        return spy(feed, check)

    pipe.runners["unet"].infer = slowed
    kw = dict(negative_prompt=NEGATIVES, height=H, width=W, steps=STEPS, guidance_scale=5.0, latents=latents,
              output_type="float")
    first = pipe(PROMPTS, **kw)
    assert spy.batches == [4, 2, 2] * (STEPS // 2)  # measuring: batched and sequential steps alternate
    pipe(PROMPTS, **kw)  # each mode now has AUTO_SAMPLES timed steps past its first
    assert AUTO_SAMPLES + 1 <= STEPS
    spy.batches.clear()
    last = pipe(PROMPTS, **kw)
    assert spy.batches == ([4] * STEPS if want == "batched" else [2] * (2 * STEPS))
    assert pipe.cfg_choice[f"B=2 {H // 8}x{W // 8}"]["mode"] == want
    np.testing.assert_allclose(np.stack(first), np.stack(last), rtol=0, atol=1e-5)
    # Every AUTO_REFRESH-th step of a shape re-times the other mode once; the faster one stays chosen.
    assert AUTO_REFRESH == 4 * STEPS
    pipe(PROMPTS, **kw)  # steps 12-15 of this shape
    spy.batches.clear()
    pipe(PROMPTS, **kw)  # step 16: the other mode once, then back
    other, keep = ([2, 2], [4]) if want == "batched" else ([4], [2, 2])
    assert spy.batches == other + keep * (STEPS - 1)
    assert pipe.cfg_choice[f"B=2 {H // 8}x{W // 8}"]["mode"] == want
    pipe.backend = "trt"  # on GPU backends "auto" batches without measuring
    assert pipe._pick_cfg((2, 4, H // 8, W // 8)) == "batched"
    pipe.close()


def test_guidance_one_skips_uncond_and_seed_is_reproducible(bundle):
    from vkt.runtime.txt2img import Txt2Img

    pipe = Txt2Img(bundle, scheduler="euler_a", threads=1, progress_bar=False)
    spy = _Spy(pipe.runners["unet"])
    pipe.runners["unet"].infer = spy
    a = pipe("a photo of the cats", guidance_scale=1.0, steps=3, seed=123, num_images_per_prompt=2, height=32, width=32)
    b = pipe("a photo of the cats", guidance_scale=1.0, steps=3, seed=np.random.default_rng(123), num_images_per_prompt=2,
             height=32, width=32)
    assert spy.batches == [2] * 6  # B = 2 per call, no uncond half
    assert len(a) == 2 and a[0].shape == (32, 32, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[1])  # two images per prompt get different noise
    d = a.timings.to_dict()
    assert len(d["unet_s"]) == 3 and d["total_s"] >= d["unet_total_s"] + d["vae_s"]


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": []}, "empty list"),
    ({"prompt": ["ok", 3]}, "strings only"),
    ({"height": 60}, "height=60 is not divisible by 8"),
    ({"width": 40}, "width=40 must be a multiple of 16"),
    ({"height": 128}, r"outside the bundle's UNet profile: 32\.\.64"),
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0, got -1.0"),
    ({"prompt": ["a", "b", "c"]}, r"3 images with guidance need a UNet batch of 2 x 3 = 6, .* at most 4"),
    ({"negative_prompt": ["x", "y"]}, "negative_prompt has 2 entries but prompt has 1"),
    ({"latents": np.zeros((1, 4, 4, 4), np.float32)}, r"latents must be a numpy array of shape \(1, 4, 8, 8\)"),
    ({"seed": -5}, "seed must be a non-negative integer"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an integer >= 1"),
    ({"output_type": "pil"}, "output_type must be"),
])
def test_bad_inputs_raise_input_errors(bundle, kwargs, match):
    from vkt.runtime.txt2img import Txt2Img

    pipe = Txt2Img(bundle, threads=1, progress_bar=False)
    args = {"prompt": "a cat", "height": H, "width": W, "steps": 2, **kwargs}
    with pytest.raises(InputError, match=match):
        pipe(**args)
    assert not pipe.runners["unet"].is_active  # rejected before any session opened


def test_bad_bundle_and_scheduler(bundle, toy_bundle):
    from vkt.runtime.txt2img import Txt2Img

    with pytest.raises(BundleError, match="not a Stable Diffusion bundle"):
        Txt2Img(toy_bundle)
    with pytest.raises(InputError, match="unknown scheduler 'lms'"):
        Txt2Img(bundle, scheduler="lms")
    with pytest.raises(InputError, match="cfg must be"):
        Txt2Img(bundle, cfg="parallel")


def test_session_config_reaches_every_session(bundle, latents):
    """Txt2Img's session_config goes to its three onnxruntime sessions: without spinning the images are the
    same; an entry onnxruntime acts on at load time (read the graph as ORT format) fails each component's load."""
    from vkt.errors import ModelError
    from vkt.runtime.txt2img import Txt2Img

    args = dict(prompt=PROMPTS[0], height=H, width=W, steps=2, latents=latents[:1], output_type="float")
    want = Txt2Img(bundle, threads=1, progress_bar=False)(**args)
    nospin = Txt2Img(bundle, threads=1, progress_bar=False, session_config={"session.intra_op.allow_spinning": "0"})
    got = nospin(**args)
    np.testing.assert_array_equal(got[0], want[0])
    assert {c: r.session_config for c, r in nospin.runners.items()} == {
        c: {"session.intra_op.allow_spinning": "0"} for c in ("text_encoder", "unet", "vae_decoder")}
    bad = Txt2Img(bundle, threads=1, progress_bar=False, session_config={"session.load_model_format": "ORT"})
    for r in bad.runners.values():
        with pytest.raises(ModelError, match="cannot load"):
            r.activate()


def test_export_in_memory_with_external_data(tiny_pipe, bundle, latents, tmp_path, monkeypatch):
    """The > 2 GB path at tiny scale: with the threshold lowered, every graph keeps its weights in a
    ``.onnx.data`` file listed in the manifest, and the runtime gives the same images."""
    import vkt.onnxio
    from vkt.bundle import Bundle
    from vkt.models.sd import SDProfile, export_sd
    from vkt.runtime.txt2img import Txt2Img

    monkeypatch.setattr(vkt.onnxio, "TWO_GB", 10_000)
    report = export_sd(tiny_pipe, tmp_path / "ext", profile=SDProfile(max_batch=2, min_size=32, opt_size=64, max_size=64))
    b = Bundle.load(report.bundle)
    assert sorted(e.path for e in b.files("onnx external data")) == [
        "text_encoder.onnx.data", "unet.onnx.data", "vae_decoder.onnx.data"]
    # tensors under 1 KB stay inline (save_onnx's threshold), the rest moved out
    assert (b.root / "unet.onnx").stat().st_size < (bundle / "unet.onnx").stat().st_size
    assert (b.root / "unet.onnx.data").stat().st_size > 100_000
    # in-memory pipelines keep diffusers' "_use_default_values" bookkeeping: the runtime honours it
    assert "_use_default_values" in json.loads(b.path("scheduler config", "unet").read_text())
    kw = dict(negative_prompt=NEGATIVES, height=H, width=W, steps=2, guidance_scale=7.5, latents=latents, output_type="float")
    with Txt2Img(b, threads=1, progress_bar=False) as ext, Txt2Img(bundle, threads=1, progress_bar=False) as ref:
        np.testing.assert_allclose(np.stack(ext(PROMPTS, **kw)), np.stack(ref(PROMPTS, **kw)), rtol=0, atol=1e-6)


def test_export_rejects_bad_inputs(tiny_pipe, tmp_path):
    from vkt.models.sd import SDProfile, export_sd

    with pytest.raises(InputError, match="min_size=40 must be a multiple of 16"):
        export_sd(tiny_pipe, tmp_path / "x", profile=SDProfile(max_batch=1, min_size=40, opt_size=64, max_size=64))
    with pytest.raises(InputError, match="without"):
        export_sd(object(), tmp_path / "y")
    with pytest.raises(InputError, match="min <= opt <= max"):
        SDProfile(min_size=512, opt_size=256)
    from vkt.errors import ModelError

    with pytest.raises(ModelError, match="not a diffusers Stable Diffusion folder"):
        export_sd(tmp_path, tmp_path / "z")


def test_cli_txt2img(bundle, tmp_path, capsys):
    import cv2

    from vkt.cli.main import main

    out = tmp_path / "img.png"
    assert main(["txt2img", str(bundle), "a photo of the cats", "-o", str(out), "--steps", "2", "--seed", "1",
                 "--height", "32", "--width", "48", "--num-images", "2", "--scheduler", "euler_a", "--threads", "1",
                 "--cfg", "batched"]) == 0
    for i in range(2):
        img = cv2.imread(str(tmp_path / f"img-{i}.png"))
        assert img is not None and img.shape == (32, 48, 3)
    text = capsys.readouterr().out
    assert "UNet 2 calls x" in text and "euler_a" in text  # batched guidance: one call per step
    assert main(["txt2img", str(bundle), "a cat", "-o", str(out), "--height", "60"]) == 2
    assert "height=60 is not divisible by 8" in capsys.readouterr().err
    assert main(["txt2img", str(bundle), "a cat", "-o", str(tmp_path / "x.gif")]) == 2
