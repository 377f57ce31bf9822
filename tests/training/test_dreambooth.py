"""Dreambooth on a tiny random SD pipeline (CPU, one thread): learning, prior term, frozen VAE, exact resume
after a real SIGKILL, export + generation through the runtime, and bad inputs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vkt.errors import InputError, ModelError

pytestmark = pytest.mark.torch
RES = 32


@pytest.fixture(scope="module")
def torch1(torch1):
    """The shared one-thread torch (tests/conftest.py), skipping without diffusers or lightning."""
    pytest.importorskip("diffusers")
    pytest.importorskip("lightning")
    return torch1


@pytest.fixture(scope="module")
def base(torch1, tmp_path_factory):
    """A saved tiny pipeline and three instance 'photos' (an orange disc on black)."""
    import cv2

    from vkt.models.sd.tiny import tiny_pipeline

    root = tmp_path_factory.mktemp("db")
    tiny_pipeline(root / "tok", size=RES).save_pretrained(str(root / "base"))
    (root / "inst").mkdir()
    for i in range(3):
        im = np.zeros((40 + 8 * i, 40, 3), np.uint8)
        cv2.circle(im, (20, 20 + 4 * i), 12, (0, 160, 255), -1)
        cv2.imwrite(str(root / "inst" / f"{i}.png"), im)
    return root


def _cfg(base: Path, out: Path, **kw):
    from vkt.training.dreambooth_config import from_dict

    d = dict(pretrained=str(base / "base"), instance_dir=str(base / "inst"), identifier="sks", class_noun="dog",
             output_dir=str(out), class_dir=str(base / "class"), num_class_images=4, class_steps=2, resolution=RES,
             max_steps=30, lr=1e-3, checkpoint_every=10, progress_bar=False, num_threads=1, prior_loss_weight=0.5)
    d.update(kw)
    return from_dict(d)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """One 30-step run, capturing the components the trainer loaded."""
    import vkt.training.dreambooth as db

    loaded = {}
    orig = db._load_base

    def spy(root):
        loaded["base"] = orig(root)
        return loaded["base"]

    db._load_base = spy
    try:
        cfg = _cfg(base, tmp_path_factory.mktemp("run") / "run", sample_every=15, sample_steps=2)
        result = db.train_dreambooth(cfg)
    finally:
        db._load_base = orig
    return cfg, result, loaded["base"]


def test_instance_loss_decreases_and_prior_is_weighted(trained):
    cfg, r, _ = trained
    assert [x["step"] for x in r.losses] == list(range(1, 31)) and r.start_step == 0
    print(f"instance loss on fixed draws {r.eval_before['instance_loss']:.4f} -> {r.eval_after['instance_loss']:.4f}")
    assert r.eval_after["instance_loss"] < 0.9 * r.eval_before["instance_loss"]
    for x in r.losses:
        assert x["prior_loss"] > 0
        assert x["loss"] == pytest.approx(x["instance_loss"] + 0.5 * x["prior_loss"], rel=1e-6)
    assert (r.run_dir / "config.yaml").is_file() and "prior_loss_weight: 0.5" in (r.run_dir / "config.yaml").read_text()


def test_vae_frozen_bit_identical(trained, torch1):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    cfg, r, b = trained
    ref = AutoencoderKL.from_pretrained(str(Path(cfg.pretrained) / "vae")).state_dict()
    got = b.vae.state_dict()
    assert set(ref) == set(got) and all(torch1.equal(ref[k], got[k]) for k in ref)
    assert not b.vae.training and not any(p.requires_grad for p in b.vae.parameters())
    ck = r.run_dir / "checkpoints" / "step-000030"
    weights = load_file(str(ck / "weights.safetensors"))
    state = torch1.load(ck / "state.pt", weights_only=True)
    assert all(k.startswith("unet.") for k in weights)  # nothing of the VAE (nor the frozen text encoder)
    n_unet = sum(1 for p in b.unet.parameters())
    assert len(weights) == n_unet == len(state["optimizer"]["state"])  # optimizer state for the UNet only
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["step"] == 30
    # the trained UNet differs from the base one
    trained_unet = load_file(str(r.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    base_unet = load_file(str(Path(cfg.pretrained) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch1.equal(trained_unet[k], base_unet[k]) for k in base_unet)


def test_tracking_and_samples(trained):
    _, r, _ = trained
    events = list((r.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    if events:  # tensorboard installed
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        assert {"train/loss", "train/instance_loss", "train/prior_loss", "train/lr"} <= set(acc.Tags()["scalars"])
        assert "samples/0" in acc.Tags()["images"]
    assert sorted(p.name for p in (r.run_dir / "samples").iterdir()) == ["step-000015-0.png", "step-000030-0.png"]


def test_trained_folder_exports_and_generates(trained, tmp_path):
    from vkt.models.sd import SDProfile, export_sd
    from vkt.runtime.txt2img import Txt2Img

    _, r, _ = trained
    rep = export_sd(r.model_dir, tmp_path / "db.vkt", profile=SDProfile(max_batch=1, min_size=RES, opt_size=RES,
                                                                        max_size=RES))
    with Txt2Img(rep.bundle, threads=1, progress_bar=False) as pipe:
        images = pipe("a photo of sks dog", steps=2, seed=0, height=RES, width=RES)
    assert images[0].shape == (RES, RES, 3) and images[0].std() > 0


def test_sigkill_and_resume_matches_uninterrupted_run(base, torch1, tmp_path):
    """A real subprocess is SIGKILLed mid-training; the resumed run's losses equal the uninterrupted run's."""
    import yaml

    from vkt.training.dreambooth import read_losses, train_dreambooth

    steps = 40
    ref = train_dreambooth(_cfg(base, tmp_path / "ref", max_steps=steps, checkpoint_every=3, trackers=["none"]))
    run = tmp_path / "killed"
    cfg = _cfg(base, run, max_steps=steps, checkpoint_every=3, trackers=["none"])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "train", "dreambooth", "--config", str(tmp_path / "cfg.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(read_losses_safe(run)) < 8:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training subprocess made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = len(read_losses_safe(run))
    assert killed_at < steps and not (run / "model").exists()
    class_mtimes = {p.name: p.stat().st_mtime_ns for p in (base / "class").glob("*.png")}
    resumed = train_dreambooth(cfg, resume=True)
    assert 6 <= resumed.start_step < steps and resumed.start_step % 3 == 0
    want = {x["step"]: x for x in ref.losses}
    got = resumed.losses
    print(f"killed after {killed_at} logged steps, resumed from step {resumed.start_step}; "
          f"max |loss diff| {max(abs(x['loss'] - want[x['step']]['loss']) for x in got):.1e}")
    assert [x["step"] for x in got] == list(range(resumed.start_step + 1, steps + 1))
    for x in got:
        assert x == want[x["step"]]  # bit-identical losses and learning rates
    # the run's log holds each step once, the killed run's rows up to the checkpoint and the resumed ones after
    assert [x["step"] for x in read_losses(run)] == list(range(1, steps + 1))
    assert {p.name: p.stat().st_mtime_ns for p in (base / "class").glob("*.png")} == class_mtimes  # not regenerated


def read_losses_safe(run: Path) -> list[dict]:
    p = run / "losses.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def test_lora_trains_adapters_and_merges(base, tmp_path, torch1):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from vkt.training.dreambooth import train_dreambooth

    r = train_dreambooth(_cfg(base, tmp_path / "lora", max_steps=4, checkpoint_every=4, lora={"rank": 2},
                              trackers=["none"], prior_preservation=False, lr=1e-2))
    w = load_file(str(r.run_dir / "checkpoints" / "step-000004" / "weights.safetensors"))
    assert w and all("lora_" in k for k in w)
    unet = load_file(str(r.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert not any("lora" in k for k in unet)  # merged: a plain UNet
    base_unet = load_file(str(base / "base" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(unet) == set(base_unet)
    changed = [k for k in unet if not torch1.equal(unet[k], base_unet[k])]
    assert changed and all("attn" in k for k in changed)  # only the attention projections moved
    assert all(x["prior_loss"] == 0 for x in r.losses)


# ---- bad inputs -----------------------------------------------------------------------------------

def test_bad_instance_images(base, tmp_path):
    import shutil

    from vkt.training.dreambooth import train_dreambooth

    with pytest.raises(InputError, match="instance image folder .*nope.* does not exist"):
        train_dreambooth(_cfg(base, tmp_path / "r", instance_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images; expected 3-5 photos"):
        train_dreambooth(_cfg(base, tmp_path / "r", instance_dir=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    shutil.copytree(base / "inst", bad)
    (bad / "3.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"instance image .*3\.png.* cannot be read"):
        train_dreambooth(_cfg(base, tmp_path / "r", instance_dir=str(bad)))
    (bad / "3.png").unlink()
    (bad / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="holds 'notes.txt', which is not an image"):
        train_dreambooth(_cfg(base, tmp_path / "r", instance_dir=str(bad)))


def test_class_folder_with_foreign_files_and_resumable_generation(tmp_path):
    from vkt.training.dreambooth_data import ensure_class_images

    calls = []

    def gen(prompt, seed):
        calls.append(seed)
        return np.full((8, 8, 3), seed, np.uint8)

    d = tmp_path / "cls"
    paths = ensure_class_images(d, "a photo of dog", 3, 10, gen, progress_bar=False)
    assert [p.name for p in paths] == ["class-00000.png", "class-00001.png", "class-00002.png"] and calls == [10, 11, 12]
    (d / "class-00001.png").unlink()
    (d / ".class-00003.png.tmp-xyz").write_bytes(b"half")  # a killed write
    calls.clear()
    assert len(ensure_class_images(d, "a photo of dog", 4, 10, gen, progress_bar=False)) == 4
    assert calls == [11, 13] and not (d / ".class-00003.png.tmp-xyz").exists()  # only the missing ones
    with pytest.raises(InputError, match=r"made with other settings \{'prompt': \('a photo of dog', 'a photo of cat'\)\}"):
        ensure_class_images(d, "a photo of cat", 4, 10, gen, progress_bar=False)
    (d / "readme.md").write_text("x")
    with pytest.raises(InputError, match="holds 'readme.md', which is not an image"):
        ensure_class_images(d, "a photo of dog", 4, 10, gen, progress_bar=False)
    (d / "readme.md").unlink()
    (d / "broken.jpg").write_bytes(b"\xff\xd8junk")
    with pytest.raises(InputError, match=r"class image .*broken\.jpg.* cannot be read"):
        ensure_class_images(d, "a photo of dog", 4, 10, gen, progress_bar=False)


def test_common_word_identifier_warns(base, tmp_path, caplog):
    from vkt.training.dreambooth import train_dreambooth
    from vkt.training.dreambooth_data import check_identifier

    assert check_identifier("sks") is None
    assert "common English word" in check_identifier("Photo")
    assert "frequent token" in check_identifier("zorp", {**{f"t{i}": i for i in range(40_000)}, "zorp</w>": 812})
    with caplog.at_level(logging.WARNING, logger="vkt"):
        train_dreambooth(_cfg(base, tmp_path / "r", identifier="cat", max_steps=1, prior_preservation=False,
                              trackers=["none"]))
    assert any("identifier 'cat' is a common English word" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="must differ from class_noun"):
        _cfg(base, tmp_path / "r", identifier="dog")
    with pytest.raises(InputError, match="identifier must be one word"):
        _cfg(base, tmp_path / "r", identifier="my dog")
    with pytest.raises(InputError, match="already holds checkpoints .* pass --resume"):
        train_dreambooth(_cfg(base, tmp_path / "r", identifier="cat", max_steps=1, prior_preservation=False))


def test_yaml_typos_and_bad_values(base, tmp_path):
    from vkt.training.dreambooth_config import load_config

    good = f"pretrained: {base / 'base'}\ninstance_dir: {base / 'inst'}\nidentifier: sks\nclass_noun: dog\noutput_dir: out\n"
    p = tmp_path / "c.yaml"
    p.write_text(good + "prior_los_weight: 1.0\n")
    with pytest.raises(InputError, match=r"unknown setting 'prior_los_weight' \(did you mean 'prior_loss_weight'\?\)"):
        load_config(p)
    p.write_text(good + "lora:\n  rnak: 4\n")
    with pytest.raises(InputError, match=r"lora: unknown setting 'rnak' \(did you mean 'rank'\?\)"):
        load_config(p)
    p.write_text(good + "max_steps: ten\n")
    with pytest.raises(InputError, match="max_steps must be a positive integer, got 'ten'"):
        load_config(p)
    p.write_text(good + "lr_scheduler: cosin\n")
    with pytest.raises(InputError, match=r"did you mean 'cosine'"):
        load_config(p)
    p.write_text(good + "resolution: 30\n")
    with pytest.raises(InputError, match=r"resolution must be a multiple of 8 \(the VAE.s cell\), got 30"):
        load_config(p)
    p.write_text("pretrained: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(p)
    p.write_text("identifier: sks\n")
    with pytest.raises(InputError, match="missing required setting"):
        load_config(p)
    p.write_text(good)
    cfg = load_config(p)
    assert cfg.output_dir == str(tmp_path / "out")  # relative to the YAML file
    cfg2 = load_config(p)
    assert cfg2 == cfg


def test_missing_pipeline_file_and_cli_errors(base, tmp_path, capsys):
    import shutil

    from vkt.cli.main import main
    from vkt.training.dreambooth import train_dreambooth

    broken = tmp_path / "broken"
    shutil.copytree(base / "base", broken)
    (broken / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelError, match="missing text_encoder/config.json"):
        train_dreambooth(_cfg(base, tmp_path / "r", pretrained=str(broken)))
    p = tmp_path / "c.yaml"
    p.write_text("pretrained: x\nidentifer: sks\n")
    assert main(["train", "dreambooth", "--config", str(p)]) == 2
    assert "unknown setting 'identifer' (did you mean 'identifier'?)" in capsys.readouterr().err


def test_bf16_accumulation_cosine_and_text_encoder(base, tmp_path, torch1):
    """Lightning's precision flag, gradient accumulation, warm-up + cosine LR and text-encoder training on CPU."""
    from safetensors.torch import load_file

    from vkt.training.dreambooth import train_dreambooth

    r = train_dreambooth(_cfg(base, tmp_path / "te", max_steps=4, checkpoint_every=4, precision="bf16-mixed", grad_accum=2,
                              lr_scheduler="cosine", warmup_steps=2, train_text_encoder=True, random_flip=True,
                              trackers=["none"]))
    assert [x["step"] for x in r.losses] == [1, 2, 3, 4]
    assert [x["lr"] for x in r.losses] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])  # diffusers' warm-up then cosine
    w = load_file(str(r.run_dir / "checkpoints" / "step-000004" / "weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in w) and any(k.startswith("unet.") for k in w)
    te = load_file(str(r.model_dir / "text_encoder" / "model.safetensors"))
    te0 = load_file(str(base / "base" / "text_encoder" / "model.safetensors"))
    assert any(not torch1.equal(te[k], te0[k]) for k in te0)
