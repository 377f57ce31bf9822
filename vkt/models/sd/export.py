"""Export a Stable Diffusion pipeline (text encoder, UNet, VAE decoder) to ONNX and write an SD bundle.

Graphs (names are ``vkt.tasks``' SD constants; dims in latent space, h = H / 8):

    text_encoder  input_ids [batch, 77] int32               -> last_hidden_state [batch, 77, D] float32
    unet          sample [batch, 4, h, w] float32,
                  timestep [batch] float32,
                  encoder_hidden_states [batch, 77, D] float32 -> noise_pred [batch, 4, h, w] float32
    vae_decoder   latents [batch, 4, h, w] float32          -> image [batch, 3, 8h, 8w] float32 in ~[-1, 1]

Choices, and why:
- ``input_ids`` is int32: TensorRT's native index type (demoDiffusion does the same); the graph
  casts to int64 for the embedding lookup. The runtime casts to whatever the spec says.
- ``timestep`` is a 1-D float32 tensor of the UNet's batch size, not a scalar: one named axis
  ("batch") then covers every input, so the TensorRT profile is plain min/opt/max data, and
  per-sample timesteps stay possible. Float, because Euler-type schedulers use fractional
  timesteps (float32 holds every integer timestep up to 2^24 exactly).
- The VAE decoder graph divides by ``scaling_factor`` itself (baked in: the latents it takes are
  the scheduler's), and stops at the decoder output: ``x / 2 + 0.5``, clipping and uint8
  conversion stay in numpy (recorded in the manifest's ``postprocess``), so float images stay
  available.
- Profiles: the UNet's batch axis runs to ``2 * max_batch`` because classifier-free guidance puts
  the unconditional and conditional halves in one call; the text encoder's too (both prompt sets
  are encoded in one call); the VAE's to ``max_batch``.
- The TorchScript exporter (``dynamo=False``): it reads ``dynamic_axes`` as given (see
  vkt.models.textdet.export for the longer story).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.log import get_logger, timed
from vkt.models.sd.source import load_parts, tokenizer_files
from vkt.specs import ExportSpec, Profile, TensorSpec
from vkt.tasks import TEXT_IDS, TEXT_OUT, UNET_OUT, UNET_SAMPLE, UNET_TEXT, UNET_TIMESTEP, VAE_IN, VAE_OUT

log = get_logger(__name__)
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class SDProfile:
    """Shape ranges the exported graphs (and engines built from them) must serve.

    max_batch: images per call, B (the UNet's batch axis gets 2B for guidance).
    min_size / opt_size / max_size: image side in pixels (height and width alike); each a multiple
        of the pipeline's pixel multiple (vae scale factor x UNet down-sampling, 64 for SD).
    """

    max_batch: int = 4
    min_size: int = 256
    opt_size: int = 512
    max_size: int = 1024

    def __post_init__(self) -> None:
        for k in ("max_batch", "min_size", "opt_size", "max_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"SDProfile.{k} must be a positive integer, got {v!r}")
        if not self.min_size <= self.opt_size <= self.max_size:
            raise InputError(f"SDProfile sizes must satisfy min <= opt <= max, got {self.min_size}, "
                             f"{self.opt_size}, {self.max_size}")


def sd_specs(profile: SDProfile, vae_scale: int, latent_channels: int, seq_len: int, hidden: int,
             opset: int = 17) -> dict[str, ExportSpec]:
    """The three components' ExportSpecs; axes "height"/"width" are latent sizes (pixels / vae_scale)."""
    lat = tuple(s // vae_scale for s in (profile.min_size, profile.opt_size, profile.max_size))
    B = profile.max_batch
    text = ExportSpec(
        inputs=(TensorSpec(TEXT_IDS, "int32", ("batch", seq_len)),),
        outputs=(TensorSpec(TEXT_OUT, "float32", ("batch", seq_len, hidden)),),
        profiles=(Profile({"batch": (1, 2, 2 * B)}),), opset=opset)
    unet = ExportSpec(
        inputs=(TensorSpec(UNET_SAMPLE, "float32", ("batch", latent_channels, "height", "width")),
                TensorSpec(UNET_TIMESTEP, "float32", ("batch",)),
                TensorSpec(UNET_TEXT, "float32", ("batch", seq_len, hidden))),
        outputs=(TensorSpec(UNET_OUT, "float32", ("batch", latent_channels, "height", "width")),),
        profiles=(Profile({"batch": (1, 2, 2 * B), "height": lat, "width": lat}),), opset=opset)
    vae = ExportSpec(
        inputs=(TensorSpec(VAE_IN, "float32", ("batch", latent_channels, "height", "width")),),
        outputs=(TensorSpec(VAE_OUT, "float32", ("batch", 3, "image_height", "image_width")),),
        profiles=(Profile({"batch": (1, 1, B), "height": lat, "width": lat}),), opset=opset)
    return {"text_encoder": text, "unet": unet, "vae_decoder": vae}


# ---- export wrappers: plain tensors in, one tensor out ---------------------------------------------

def _wrappers(text_encoder: Any, unet: Any, vae: Any) -> dict[str, Any]:
    import torch

    class TextEncoder(torch.nn.Module):
        """input_ids [B, 77] int32 -> last_hidden_state [B, 77, D] (no attention mask: SD uses none)."""

        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids.to(torch.int64), return_dict=False)[0]

    class UNet(torch.nn.Module):
        """(sample [B, 4, h, w], timestep [B], text [B, 77, D]) -> noise_pred [B, 4, h, w]."""

        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VAEDecoder(torch.nn.Module):
        """latents [B, 4, h, w] (scheduler scale) -> image [B, 3, 8h, 8w] in ~[-1, 1]; 1/scaling_factor baked in."""

        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m
            self.inv_scale = 1.0 / float(m.config.scaling_factor)

        def forward(self, latents: torch.Tensor) -> torch.Tensor:
            return self.m.decode(latents * self.inv_scale, return_dict=False)[0]

    return {"text_encoder": TextEncoder(text_encoder).eval(), "unet": UNet(unet).eval(), "vae_decoder": VAEDecoder(vae).eval()}


# ---- export -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SDExportReport:
    """What export_sd wrote: the bundle, its specs, and ORT-vs-torch max abs difference per component."""

    bundle: Path
    specs: dict[str, ExportSpec]
    parity: dict[str, float]


def export_sd(source: Any, dest: str | os.PathLike, profile: SDProfile | None = None, opset: int = 17,
              check: bool = True, tol: float = 1e-3, overwrite: bool = False, name: str | None = None,
              fp16: bool = False, ort_fused: bool = True, int8: bool = False,
              calib_prompts: Sequence[str] | None = None, calib_steps: int = 8) -> SDExportReport:
    """Export a Stable Diffusion pipeline's three graphs into a bundle at ``dest``.

    Args:
        source: a local diffusers pipeline folder (``text_encoder/ unet/ vae/ tokenizer/ scheduler/``)
            or an in-memory ``StableDiffusionPipeline`` (any object with those five attributes).
        dest: bundle folder to write (atomically).
        profile: shape ranges (default :class:`SDProfile`: up to 4 images of 256..1024 px).
        opset: ONNX opset.
        check: run each graph on onnxruntime at the profile's min shapes and compare with torch;
            ``max |ort - torch| / max |torch|`` above ``tol`` raises ModelError.
        overwrite: replace an existing bundle at ``dest``.
        fp16: also write ``<component>.fp16.onnx`` per graph (role "fp16 onnx": FP16 weights and
            compute, I/O and numerically sensitive ops kept in FP32; ``Txt2Img(precision="fp16")``).
        ort_fused: also write onnxruntime-only fused graphs ``<component>.ort.onnx`` (placement "ort";
            vkt.models.sd.optimize), which the "ort" backend then runs; TensorRT builds the plain ones.
        int8: calibrate the UNet on its inputs from FP32 generations of ``calib_prompts`` (default
            vkt.models.sd.int8.CALIB_PROMPTS) x ``calib_steps`` DDIM steps at the profile's opt size, and
            add its Q/DQ graphs (placements "ort" and "trt"; ``Txt2Img(precision="int8")``). Graphs
            with external data (> 2 GB, the fp32 SD 1.5 UNet) cannot be quantized yet.
    Returns:
        SDExportReport. Graphs over 2 GB (the fp32 SD UNet is 3.4 GB) are written with one external
        data file beside them (role "onnx external data").
    """
    import torch

    from vkt.bundle import BundleWriter
    from vkt.onnxio import save_onnx

    profile = profile or SDProfile()
    parts = load_parts(source)
    try:
        te_cfg, unet_cfg, vae_cfg = parts.text_encoder.config, parts.unet.config, parts.vae.config
        vae_scale = 2 ** (len(vae_cfg.block_out_channels) - 1)
        # The UNet halves h and w once per down block but the last; exported graphs bake the
        # up-sampling sizes for multiples of this, so the runtime enforces it.
        unet_multiple = 2 ** (len(unet_cfg.block_out_channels) - 1)
        pixel_multiple = vae_scale * unet_multiple
        for k in ("min_size", "opt_size", "max_size"):
            if getattr(profile, k) % pixel_multiple:
                raise InputError(f"SDProfile.{k}={getattr(profile, k)} must be a multiple of {pixel_multiple} "
                                 f"(vae scale {vae_scale} x UNet down-sampling {unet_multiple})")
        extra_cond = {k: getattr(unet_cfg, k, None) for k in ("addition_embed_type", "time_cond_proj_dim",
                                                                 "class_embed_type", "encoder_hid_dim_type")}
        if any(v is not None for v in extra_cond.values()):
            raise ModelError(f"this UNet takes extra conditioning {({k: v for k, v in extra_cond.items() if v is not None})} "
                             "(SDXL / LCM / unCLIP style); vkt exports SD 1.x/2.x text-to-image UNets only")
        if unet_cfg.in_channels != vae_cfg.latent_channels:
            raise ModelError(f"the UNet takes {unet_cfg.in_channels} latent channels but the VAE makes "
                             f"{vae_cfg.latent_channels}: not an SD text-to-image pipeline (inpainting UNets take 9)")
        tok_cfg = tokenizer_files(parts.tokenizer_dir)
        seq_len = int(tok_cfg["max_length"])
        if seq_len > te_cfg.max_position_embeddings:
            raise ModelError(f"the tokenizer pads to {seq_len} but the text encoder has {te_cfg.max_position_embeddings} positions")
        specs = sd_specs(profile, vae_scale, unet_cfg.in_channels, seq_len, te_cfg.hidden_size, opset)
        if unet_cfg.cross_attention_dim != te_cfg.hidden_size:
            raise ModelError(f"UNet cross_attention_dim {unet_cfg.cross_attention_dim} != text encoder hidden size "
                             f"{te_cfg.hidden_size}")
        wrappers = _wrappers(parts.text_encoder.float().eval(), parts.unet.float().eval(), parts.vae.float().eval())
        lat = profile.opt_size // vae_scale
        dummies = {
            "text_encoder": (torch.ones(2, seq_len, dtype=torch.int32),),
            "unet": (torch.randn(2, unet_cfg.in_channels, lat, lat), torch.full((2,), 500.0),
                     torch.randn(2, seq_len, te_cfg.hidden_size)),
            "vae_decoder": (torch.randn(1, vae_cfg.latent_channels, lat, lat),),
        }
        parity: dict[str, float] = {}
        with BundleWriter(dest, family="sd", task="text-to-image", name=name, overwrite=overwrite) as w:
            for comp in COMPONENTS:
                spec = specs[comp]
                with timed(f"exporting {comp}", log):
                    proto = _export_one(wrappers[comp], dummies[comp], spec, opset)
                    fname = f"{comp}.onnx"
                    files = save_onnx(proto, w.staged(fname))
                    del proto
                if check:
                    with timed(f"checking {comp} on onnxruntime", log):
                        parity[comp] = _parity(wrappers[comp], w.staged(fname), spec, int(te_cfg.vocab_size))
                    if not parity[comp] <= tol:
                        raise ModelError(f"exported {comp} differs from torch by {parity[comp]:.3g} (relative to the "
                                         f"output's magnitude), more than tol={tol}")
                extra: dict[str, Any] = {"parity_max_rel": parity.get(comp)}
                if comp == "unet":
                    extra.update(in_channels=int(unet_cfg.in_channels), latent_multiple=unet_multiple,
                                 default_size=int(unet_cfg.sample_size) * vae_scale
                                 if isinstance(unet_cfg.sample_size, int) else profile.opt_size)
                if comp == "vae_decoder":
                    extra.update(scaling_factor=float(vae_cfg.scaling_factor), scaling_baked=True, vae_scale_factor=vae_scale)
                w.add_component(comp, spec, **extra)
                w.add_file(files[0], fname, role="fp32 onnx", component=comp, meta={"opset": opset, "exporter": "torchscript"})
                if len(files) > 1:
                    w.add_file(files[1], files[1].name, role="onnx external data", component=comp)
                if fp16:
                    import onnx

                    from vkt.export.fp16 import add_fp16

                    with timed(f"converting {comp} to fp16", log):
                        add_fp16(w, onnx.load(str(files[0])), component=comp, meta={"opset": opset})
            for fname in tok_cfg["files"]:
                w.add_file(parts.tokenizer_dir / fname, f"tokenizer/{fname}", role="tokenizer", component="text_encoder")
            w.add_file(json.dumps(parts.scheduler_config, indent=2).encode() + b"\n", "scheduler/scheduler_config.json",
                       role="scheduler config", component="unet")
            w.manifest["preprocess"] = {
                "tokenizer": {"type": "clip-bpe", "dir": "tokenizer", "max_length": seq_len,
                              "padding": "max_length", "truncation": True},
                "latents": {"channels": int(unet_cfg.in_channels), "vae_scale_factor": vae_scale,
                            "pixel_multiple": pixel_multiple, "distribution": "N(0, 1) * scheduler.init_noise_sigma"},
                "guidance": "batched: UNet batch = [uncond x B, cond x B]; noise = u + g * (c - u)",
            }
            w.manifest["postprocess"] = {
                "type": "sd-vae", "input": VAE_OUT, "scale": 0.5, "offset": 0.5, "clip": [0.0, 1.0],
                "to_uint8": "round(x * 255)", "layout": "NCHW -> NHWC", "color": "RGB",
            }
            w.manifest["precision"] = {"compute": "fp32", **w.manifest["precision"]}  # add_fp16 named the fp16 files
        if ort_fused:
            from vkt.models.sd.optimize import add_ort_graphs

            add_ort_graphs(dest)
        if int8:
            from vkt.bundle import Bundle
            from vkt.models.sd.int8 import CALIB_PROMPTS, capture_unet_feeds, quantize_unet

            b = Bundle.load(dest)
            if b.files("onnx external data", "unet"):
                raise ModelError("the UNet graph keeps its weights in external data (> 2 GB); vkt's Q/DQ writer "
                                 "handles single-file graphs only so far: the bundle was written without INT8")
            feeds = capture_unet_feeds(b, list(calib_prompts or CALIB_PROMPTS), steps=calib_steps)
            with timed(f"calibrating the UNet on {len(feeds)} captured inputs", log):
                quantize_unet(b, feeds)
        return SDExportReport(Path(dest), specs, parity)
    finally:
        for p in parts.cleanup:
            shutil.rmtree(p, ignore_errors=True)


def _export_one(module: Any, args: tuple, spec: ExportSpec, opset: int) -> Any:
    """Trace ``module`` to an in-memory ONNX ModelProto with the spec's names and axis names.

    The exporter writes to a temp folder, not a buffer: past 2 GB (the fp32 SD UNet is 3.4 GB)
    it must put weights in external data files, which only a path allows; they are loaded back
    into the proto so that save_onnx decides the final layout.
    """
    import onnx
    import torch

    from vkt.onnxio import TWO_GB, apply_spec_dims, check_onnx

    with tempfile.TemporaryDirectory(prefix="vkt-sd-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # deprecation of the TorchScript exporter, tracer warnings about Python bools in diffusers: expected
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=spec.input_names, output_names=spec.output_names,
                              dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True,
                              dynamo=False)
        proto = onnx.load(str(path), load_external_data=True)
    apply_spec_dims(proto, spec)
    if proto.ByteSize() < TWO_GB:  # the checker cannot take a > 2 GB proto in memory
        check_onnx(proto)
    return proto


def _parity(module: Any, path: Path, spec: ExportSpec, vocab_size: int) -> float:
    """Max |ORT - torch| / max |torch| at the profile's min shapes, random inputs."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    lo = {k: v[0] for k, v in spec.profiles[0].axes.items()}
    feed = {}
    for t in spec.inputs:
        shape = t.resolve(lo)
        if t.dtype == "int32":
            feed[t.name] = rng.integers(0, vocab_size, shape).astype(np.int32)
        elif t.name == UNET_TIMESTEP:
            feed[t.name] = rng.uniform(0, 999, shape).astype(np.float32)
        else:
            feed[t.name] = rng.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = module(*(torch.from_numpy(feed[n]) for n in spec.input_names)).numpy()
    if got.shape != want.shape:
        raise ModelError(f"{path.name}: onnxruntime output shape {got.shape} differs from torch's {want.shape}")
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


__all__ = ["COMPONENTS", "SDExportReport", "SDProfile", "export_sd", "sd_specs"]

