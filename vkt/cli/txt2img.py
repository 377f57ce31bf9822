"""`vkt txt2img`: generate images from a Stable Diffusion bundle with the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

import typer


def txt2img(
    bundle: Path = typer.Argument(..., help="Stable Diffusion bundle folder (vkt.models.sd.export_sd)."),
    prompt: str = typer.Argument(..., help="What to draw."),
    out: Path = typer.Option(Path("out.png"), "--out", "-o",
                             help="Image file (.png/.jpg); with --num-images N > 1: <stem>-0<ext> ... <stem>-(N-1)<ext>."),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
    steps: int = typer.Option(30, help="Denoising steps."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale (1.0: no guidance, half the UNet work)."),
    seed: int = typer.Option(None, help="Random seed (numpy); default: a fresh one."),
    height: int = typer.Option(None, help="Image height in pixels (default: the model's native size)."),
    width: int = typer.Option(None, help="Image width in pixels (default: the model's native size)."),
    scheduler: str = typer.Option(None, help="ddim, euler, euler_a, dpm++2m or pndm (default: the bundle's)."),
    num_images: int = typer.Option(1, "--num-images", help="Images for this prompt (one batched run)."),
    backend: str = typer.Option("ort", help="Runtime backend: ort, ort-cuda, ort-trt, trt, ov (OpenVINO CPU), or auto "
                                "(the faster of ort and ov, timed per component before the run). One per component: "
                                "unet=ov,text_encoder=auto (the others ort; a bare name sets them: ov,vae_decoder=ort). "
                                "Components: text_encoder, unet, vae_decoder."),
    precision: str = typer.Option("fp32", help="Bundle graphs to run: fp32, fp16 or int8."),
    threads: int = typer.Option(None, min=1, help="CPU threads for onnxruntime or OpenVINO (default: the library's; "
                                "onnxruntime: one per physical core)."),
    cfg: str = typer.Option("auto", help="Guidance: batched (one UNet call at 2B per step), sequential (two at B) or "
                                        "auto (batched on GPU; on CPU times both on the first steps, keeps the faster)."),
) -> None:
    """Text to image; prints where each image went and the time per stage."""
    import cv2

    from vkt.cli.outputs import output_file
    from vkt.errors import InputError
    from vkt.fsutil import atomic_write_bytes
    from vkt.runtime.txt2img import Txt2Img

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise InputError(f"--out must end in .png, .jpg, .jpeg, .webp or .bmp, got {str(out)!r}")
    paths = [out] if num_images == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(num_images)]
    for path in paths:
        output_file(path, "--out", [bundle])
    pipe = Txt2Img(bundle, scheduler=scheduler, backend=backend, precision=precision, threads=threads, cfg=cfg)
    pipe.check_inputs(prompt, negative, height, width, steps, guidance, num_images)  # before any session loads
    with pipe:
        images = pipe(prompt, negative_prompt=negative, height=height, width=width, steps=steps, guidance_scale=guidance,
                      seed=seed, num_images_per_prompt=num_images)
    for path, im in zip(paths, images):
        ok, buf = cv2.imencode(out.suffix.lower(), im[:, :, ::-1])  # RGB -> BGR for OpenCV
        if not ok:
            raise InputError(f"OpenCV could not encode a {out.suffix} image for {str(path)!r}")
        atomic_write_bytes(path, buf.tobytes())
        typer.echo(f"wrote {path} ({im.shape[1]}x{im.shape[0]})")
    for comp, sel in pipe.backend_choice.items():
        typer.echo(f"backend for {comp}: {sel['chosen']} (best call: "
                   + ", ".join(f"{b} {ms:.1f} ms" for b, ms in sel["ms"].items())
                   + "".join(f"; {b} left out: {why}" for b, why in sel["skipped"].items()) + ")")
    t = images.timings
    per_step = sum(t.unet) / max(len(t.unet), 1)
    typer.echo(f"{t.total:.2f} s: text encoder {t.text_encoder:.3f} s, UNet {len(t.unet)} calls x {per_step:.3f} s, "
               f"VAE {t.vae:.3f} s ({pipe.scheduler.name}, {steps} steps, guidance {guidance})")


def register(app: typer.Typer) -> None:
    app.command("txt2img")(txt2img)
