"""`vkt export`: make bundles — from an existing ONNX file now, from torch models per family."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vkt.cli.int8_options import int8_options

if TYPE_CHECKING:
    from vkt.calibration.config import Int8Config

export_app = typer.Typer(help="Export a model to a bundle (ONNX + manifest; INT8/FP16 variants and engines on request).",
                         no_args_is_help=True)


def _int8_recipe(int8: Int8Config | None, family: str) -> object | None:
    """The family's INT8 recipe, its checks (options and files) run now, before any export work; None without --int8."""
    if int8 is None:
        return None
    from vkt.cli.int8_options import check_int8
    from vkt.models import recipe_for

    recipe = recipe_for(family)
    check_int8(recipe, int8, family)
    return recipe


def _quantize(recipe: object, stage: Path, int8: Int8Config) -> dict:
    """Run the recipe on the bundle being written at ``stage`` (it appears at --output only when complete)."""
    from vkt.bundle import Bundle
    from vkt.cli.int8_options import quantize_with

    return quantize_with(recipe, Bundle.load(stage), int8)


def _bundle_output(out: Path, force: bool, inputs: list) -> Path:
    """Check --output before any work: not an input, a new or empty folder, or with --force an existing bundle."""
    from vkt.bundle import MANIFEST
    from vkt.cli.outputs import replaced_folder

    return replaced_folder(out, "--output", inputs, force=force, marker=MANIFEST, what="bundle")


@export_app.command("onnx")
@int8_options()
def export_onnx(
    model: Path = typer.Argument(..., help="The .onnx file to import (weights as initializers or Constant nodes)."),
    output: Path = typer.Option(None, "--output", "-o", help="Bundle folder to write (default: ./<model stem>.vkt)."),
    task: str = typer.Option("generic", help="generic | textdet | detr: sets the family, default profile and the "
                             "pre/post-processing recorded in the manifest."),
    profile: str = typer.Option(None, help="Axis ranges 'axis=min:opt:max,...', e.g. 'batch=1:1:8,height=32:736:1536,"
                                "width=32:736:1536' (default: the task's)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 graph (sensitive ops and I/O kept in FP32) for "
                              "TensorRT's strongly typed build."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Ship the FP32 graph after exact float "
                                  "rewrites (Identity/constant/BatchNorm folding; constant Mul/Add after a Conv folded "
                                  "into it), checked against the original on onnxruntime. INT8 graphs get them anyway, "
                                  "so this keeps FP32-vs-INT8 speed-ups honest. PP-OCRv5 det: 1.08-1.17x faster FP32."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
    config: Path = typer.Option(None, "--config", help="textdet: PaddleOCR's inference.yml shipped beside the model; "
                                "its resize, normalisation and DBPostProcess settings go into the manifest (the "
                                "options below win over it)."),
    channel: int = typer.Option(None, "--channel", help="textdet: the channel of a multi-channel output map that holds "
                                "the text probability (default: the map must have one channel)."),
    thresh: float = typer.Option(None, "--thresh", help="textdet: DB pixel threshold, in (0, 1)."),
    box_thresh: float = typer.Option(None, "--box-thresh", help="textdet: keep a region whose mean probability is at "
                                     "least this, in [0, 1]."),
    unclip_ratio: float = typer.Option(None, "--unclip-ratio", help="textdet: how far regions are grown (> 0)."),
    max_candidates: int = typer.Option(None, "--max-candidates", help="textdet: contours looked at per image."),
    limit_side_len: int = typer.Option(None, "--limit-side-len", help="textdet: resize so the short (--limit-type "
                                       "min) or long (max) side is this many pixels."),
    limit_type: str = typer.Option(None, "--limit-type", help="textdet: min | max (see --limit-side-len)."),
    max_side: int = typer.Option(None, "--max-side", help="textdet: long-side cap in pixels after the resize "
                                 "(default 2048; the profile's max height/width caps it too)."),
    mean: str = typer.Option(None, "--mean", help="textdet: per-channel mean after scaling to [0, 1], in the model's "
                             "channel order, e.g. 0.485,0.456,0.406 (default 0.5,0.5,0.5)."),
    std: str = typer.Option(None, "--std", help="textdet: per-channel std, e.g. 0.229,0.224,0.225 (default 0.5,0.5,0.5)."),
    *,
    int8: Int8Config | None = None,
) -> None:
    """Import an ONNX file as a bundle: names its image axes, checks it, runs it once, records checksums.

    With --task textdet the graph must map one image [N, 3, H, W] to a probability map [N, 1, H, W] at the
    input's resolution (or name the channel with --channel), checked on onnxruntime before anything is written.
    """
    from rich.console import Console

    from vkt.bundle import Bundle
    from vkt.cli.textdet_options import flags_of, import_settings, print_settings, textdet_overrides
    from vkt.errors import InputError
    from vkt.export.onnx_import import import_onnx
    from vkt.fsutil import staged_dir
    from vkt.specs import parse_profile
    from vkt.tasks import task_defaults

    settings = textdet_overrides(thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio,
                                 max_candidates=max_candidates, limit_side_len=limit_side_len, limit_type=limit_type,
                                 max_side_len=max_side, mean=mean, std=std)
    pre = post = None
    notes: tuple[str, ...] = ()
    if task != "textdet" and (settings or config is not None or channel is not None):
        given = ", ".join(f for f, v in (("--config", config), ("--channel", channel)) if v is not None)
        raise InputError(f"{', '.join(x for x in (given, flags_of(settings)) if x)} only apply to --task textdet")
    if task == "textdet":
        pre, post, notes = import_settings(config, channel, settings)
    recipe = _int8_recipe(int8, task_defaults(task).family)
    out = _bundle_output(output or Path(f"{model.stem}.vkt"), force, [model, *(int8.inputs() if int8 else [])])
    with staged_dir(out) as stage:  # the bundle appears at --output only when complete, INT8 graphs included
        import_onnx(model, stage, task=task, profile=parse_profile(profile) if profile else None, overwrite=force,
                    fp16=fp16, optimize=optimize, preprocess=pre, postprocess=post)
        if int8:
            section = _quantize(recipe, stage, int8)
    bundle = Bundle.load(out, verify=False)
    spec = bundle.spec()
    c = Console()
    c.print(f"[green]wrote[/] bundle {str(bundle.root)!r} ({bundle.family}/{bundle.task})", highlight=False)
    for t in spec.inputs:
        c.print(f"  input  {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    for t in spec.outputs:
        c.print(f"  output {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    for i, p in enumerate(spec.profiles):
        c.print(f"  profile {i}: " + ", ".join(f"{a}={lo}:{opt}:{hi}" for a, (lo, opt, hi) in p.axes.items()), highlight=False)
    if task == "textdet":
        print_settings(c, bundle.preprocess, bundle.postprocess, notes)
    if int8:
        from vkt.cli.quantize import print_calibration

        print_calibration(bundle, section)


@export_app.command("sd")
@int8_options()
def export_sd_cmd(
    path: Path = typer.Argument(..., help="Local diffusers StableDiffusionPipeline folder (text_encoder/ unet/ vae/ "
                                "tokenizer/ scheduler/), e.g. the output of `vkt train dreambooth`."),
    output: Path = typer.Option(None, "--output", "-o", help="Bundle folder to write (default: ./<folder name>.vkt)."),
    max_batch: int = typer.Option(4, "--max-batch", help="Images per call, B (the UNet's profile covers 2B for guidance)."),
    min_size: int = typer.Option(256, "--min-size", help="Smallest image side in pixels (multiple of 64 for SD)."),
    opt_size: int = typer.Option(512, "--opt-size", help="Image side TensorRT tunes for."),
    max_size: int = typer.Option(1024, "--max-size", help="Largest image side in pixels."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write FP16 graphs (I/O and sensitive ops kept in FP32)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare each graph on onnxruntime with torch."),
    ort_fused: bool = typer.Option(True, "--ort-fused/--no-ort-fused",
                                   help="Also write onnxruntime-only fused graphs (attention, SkipLayerNorm, Gelu; "
                                   "CPU kernels) that the ort backend runs; TensorRT builds the plain graphs. "
                                   "Adds ~3 min for an SD 1.5 UNet."),
    *,
    int8: Int8Config | None = None,
) -> None:
    """Export a Stable Diffusion pipeline (text encoder, UNet, VAE decoder) to an SD bundle.

    INT8: the UNet is calibrated on its inputs along FP32 generations of the --calib prompts; text encoder and VAE stay FP32. Not for graphs over 2 GB (the fp32 SD 1.5 UNet) yet."""
    from rich.console import Console

    from vkt.fsutil import staged_dir
    from vkt.models.sd import SDProfile, export_sd

    recipe = _int8_recipe(int8, "sd")
    out = _bundle_output(output or Path(f"{path.resolve().name}.vkt"), force, [path, *(int8.inputs() if int8 else [])])
    with staged_dir(out) as stage:  # appears at --output only when complete
        report = export_sd(path, stage, profile=SDProfile(max_batch=max_batch, min_size=min_size, opt_size=opt_size,
                                                          max_size=max_size), check=check, overwrite=force, fp16=fp16,
                           ort_fused=ort_fused)
        if int8:
            section = _quantize(recipe, stage, int8)
    c = Console()
    c.print(f"[green]wrote[/] SD bundle {str(out)!r}", highlight=False)
    for comp, spec in report.specs.items():
        axes = ", ".join(f"{a}={lo}:{opt}:{hi}" for a, (lo, opt, hi) in spec.profiles[0].axes.items())
        par = report.parity.get(comp)
        c.print(f"  {comp}: {axes}" + (f" (onnxruntime vs torch: {par:.1e} relative)" if par is not None else ""),
                highlight=False)
    if int8:
        from vkt.bundle import Bundle
        from vkt.cli.quantize import print_calibration

        print_calibration(Bundle.load(out, verify=False), section)


@export_app.command("textdet")
@int8_options()
def export_textdet_cmd(
    source: str = typer.Argument(None, help="A training checkpoint (RUN/ckpt.pt) or run folder; or use --pretrained."),
    pretrained: str = typer.Option(None, "--pretrained", help="Export imported weights instead: ppocrv5-mobile."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write."),
    profile: str = typer.Option(None, help="Axis ranges 'batch=1:1:8,height=32:736:2048,width=32:736:2048' "
                                "(default: the textdet task's)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 graph (sensitive ops and I/O kept in FP32)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
    *,
    int8: Int8Config | None = None,
) -> None:
    """PyTorch DB text detector -> dynamic-shape ONNX bundle, with ORT-vs-torch parity printed."""
    from rich.console import Console

    from vkt.errors import InputError
    from vkt.fsutil import staged_dir
    from vkt.models.textdet.bundle import export_textdet_bundle
    from vkt.specs import parse_profile
    from vkt.training.textdet_ckpt import load_textdet_source

    if (source is None) == (pretrained is None):
        raise InputError("give either a checkpoint (RUN/ckpt.pt or RUN) or --pretrained ppocrv5-mobile, "
                         f"got {'both' if source else 'neither'}")
    recipe = _int8_recipe(int8, "textdet")
    _bundle_output(output, force, [source, *(int8.inputs() if int8 else [])])
    model, resize, desc = load_textdet_source(pretrained or source)
    prof = dict(parse_profile(profile).axes) if profile else None
    with staged_dir(output) as stage:  # appears at --output only when complete, INT8 graphs included
        rep = export_textdet_bundle(model, stage, profile=prof, fp16=fp16, resize=resize, overwrite=force, source=desc)
        if int8:
            section = _quantize(recipe, stage, int8)
    c = Console()
    c.print(f"[green]wrote[/] bundle {str(output)!r} from {desc}", highlight=False)
    for k, v in rep.parity.items():
        c.print(f"  parity fp32 {k}: max abs diff ORT vs torch {v:.2e}", highlight=False)
    for k, v in (rep.parity_fp16 or {}).items():
        c.print(f"  parity fp16 {k}: max abs diff ORT vs torch {v:.2e}", highlight=False)
    if int8:
        from vkt.bundle import Bundle
        from vkt.cli.quantize import print_calibration

        print_calibration(Bundle.load(output, verify=False), section)


@export_app.command("detr")
@int8_options()
def export_detr_cmd(
    checkpoint: Path = typer.Argument(..., help="DETR weights: a Hugging Face folder (config.json + model.safetensors, "
                                      "e.g. RUN/model from `vkt train detr`) or a facebookresearch/detr .pth file."),
    output: Path = typer.Option(None, "--output", "-o", help="Bundle folder to write (default: ./<checkpoint name>.vkt)."),
    postprocess: bool = typer.Option(False, "--postprocess", help="Softmax, top-k and xyxy boxes in source pixels inside "
                                     "the graph (inputs pixel_values + orig_sizes; outputs scores, labels, boxes)."),
    top_k: int = typer.Option(100, "--top-k", help="With --postprocess: detections per image the graph returns."),
    static: str = typer.Option(None, "--static", help="A static-shape graph of HxW pixels (batch 1), e.g. 800x1066; "
                               "images must resize to exactly that size."),
    shortest_edge: int = typer.Option(None, "--shortest-edge", help="Resize rule for the manifest (default: the "
                                      "training run's if the folder has vkt_train.json, else 800)."),
    longest_edge: int = typer.Option(None, "--longest-edge", help="Resize rule for the manifest (default 1333, or the run's)."),
    num_heads: int = typer.Option(8, "--num-heads", help="Attention heads of a .pth checkpoint (not stored in the file)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 graph (sensitive ops and I/O kept in FP32)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
    *,
    int8: Int8Config | None = None,
) -> None:
    """Export a DETR checkpoint to a bundle: ONNX checked against transformers on onnxruntime, manifest with labels.

    INT8: the gate runs with --holdout DIR or --holdout auto (every 4th --calib image, what this command did by default before); without --holdout the INT8 graphs ship ungated."""
    import json
    import re

    from rich.console import Console

    from vkt.errors import InputError

    recipe = _int8_recipe(int8, "detr")
    static_shape = None
    if static is not None:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", static)
        if not m or min(int(m.group(1)), int(m.group(2))) < 32:
            raise InputError(f"--static must be HxW with both sides >= 32 pixels, e.g. 800x1066; got {static!r}")
        static_shape = (1, int(m.group(1)), int(m.group(2)))
    resize = {}
    run_cfg = checkpoint / "vkt_train.json"
    if checkpoint.is_dir() and run_cfg.is_file():
        try:
            resize = dict(json.loads(run_cfg.read_text(encoding="utf-8")).get("resize", {}))
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
            raise InputError(f"{str(run_cfg)!r} is not a vkt training record (expected JSON with a 'resize' object)") from None
    for key, v in (("shortest_edge", shortest_edge), ("longest_edge", longest_edge)):
        if v is not None:
            if v < 1:
                raise InputError(f"--{key.replace('_', '-')} must be a positive number of pixels, got {v}")
            resize[key] = v
    resize = {k: int(v) for k, v in resize.items() if k in ("shortest_edge", "longest_edge")}
    out = _bundle_output(output or Path(f"{checkpoint.resolve().stem}.vkt"), force,
                         [checkpoint, *(int8.inputs() if int8 else [])])

    from vkt.bundle import Bundle
    from vkt.fsutil import staged_dir
    from vkt.models.detr.checkpoints import load_checkpoint
    from vkt.models.detr.export import export_bundle

    profile = None
    if resize and static_shape is None:
        # The default profile (sides 320..1333) is DETR-R50's; a run trained at another size gets one around its rule.
        from vkt.tasks import TASKS

        se = resize.get("shortest_edge", TASKS["detr"].preprocess["resize"]["shortest_edge"])
        le = max(resize.get("longest_edge", TASKS["detr"].preprocess["resize"]["longest_edge"]), se)
        profile = {"batch": (1, 1, 4), "height": (32, se, le), "width": (32, min(le, se * 4 // 3), le)}
    model = load_checkpoint(checkpoint, num_heads=num_heads)
    with staged_dir(out) as stage:  # appears at --output only when complete: FP16 and INT8 graphs included
        dest = export_bundle(model, stage, postprocess=postprocess, top_k=top_k, static_shape=static_shape,
                             profile=profile, overwrite=force, fp16=fp16, **resize)
        bundle = Bundle.load(dest)
        if int8:
            section = _quantize(recipe, stage, int8)
    bundle = Bundle.load(out, verify=False)
    spec = bundle.spec()
    c = Console()
    c.print(f"[green]wrote[/] bundle {str(bundle.root)!r} ({bundle.family}/{bundle.task}, "
            f"{model.config.num_labels} classes, {model.config.num_queries} queries)", highlight=False)
    for t in spec.inputs:
        c.print(f"  input  {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    for t in spec.outputs:
        c.print(f"  output {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    parity = bundle.manifest.get("export", {}).get("parity_max_abs", {})
    if parity:
        c.print("  onnxruntime vs torch max |diff|: " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()), highlight=False)
    if int8:
        from vkt.cli.quantize import print_calibration

        print_calibration(bundle, section)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
