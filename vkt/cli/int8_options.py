"""The INT8 options, defined once: `vkt export onnx|textdet|detr|sd --int8 ...` and `vkt quantize` take the same ones,
with the same meanings and defaults, and hand the command one Int8Config (vkt.calibration.config)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

PANEL = "INT8 options"


def _opt(*decls: str, help: str, metavar: str | None = None) -> Any:
    return typer.Option(*decls, help=help, metavar=metavar, rich_help_panel=PANEL)


# name -> (annotation, default): the options, in the order --help lists them
OPTIONS: dict[str, tuple[Any, Any]] = {
    "calib": (Annotated[Optional[Path], _opt("--calib", help=(
        "Calibration data: a folder of representative images (a few hundred; pre-processed as the manifest says), or "
        "for sd a text file of prompts, one per line (default there: vkt's built-in prompts)."))], None),
    "holdout": (Annotated[Optional[str], _opt("--holdout", metavar="DIR|auto", help=(
        "Held-out images (none in --calib) for the accuracy gate, which keeps layers in float until the family's "
        "metric is within --max-drop of FP32 and ships the fastest such model. 'auto': every 4th --calib image when "
        "it holds 8 or more (left out of calibration). Default: none, and INT8 ships ungated (a warning says so). "
        "Metrics: textdet hmean vs FP32 boxes, detr COCO AP vs FP32 detections; sd and generic have none yet."))], None),
    "max_drop": (Annotated[Optional[float], _opt("--max-drop", help=(
        "With --holdout: allowed metric drop vs FP32 in points (1.0 = 0.01). Default: the family's budget, "
        "textdet 1.0, detr 2.0."))], None),
    "on_fail": (Annotated[str, _opt("--on-fail", help=(
        "With --holdout, when no gate step fits: fp32 (ship no INT8 graph) | best (ship the best-scoring one)."))], "fp32"),
    "min_speedup": (Annotated[Optional[float], _opt("--min-speedup", help=(
        "With --holdout: the least speed-up over FP32 that ships INT8, timed by the gate as `vkt bench` times it (the "
        "profile's opt shape, --threads); below it FP32 ships and the log and manifest say why. Default: 1.1; 0: any."))],
        None),
    "target": (Annotated[Optional[list[str]], _opt("--target", "-t", metavar="ort|trt|openvino", help=(
        "Placement to write, repeatable: ort (onnxruntime CPU, fused integer kernels), trt (TensorRT, Q/DQ on "
        "Conv/MatMul/Gemm inputs), openvino (OpenVINO CPU integer kernels; run with --backend ov). Default: textdet "
        "all three, others ort and trt. The gate scores ort and rewrites trt with the same float layers; it scores "
        "and times openvino on OpenVINO, separately."))],
        None),
    "method": (Annotated[Optional[str], _opt("--calib-method", "--method", help=(
        "Range method: minmax | percentile | entropy. Default: the family's, percentile (sd: minmax)."))], None),
    "num_images": (Annotated[Optional[int], _opt("--num-images", "-n", help=(
        "Calibrate on at most this many images (sd: prompts). Default: all."))], None),
    "threads": (Annotated[Optional[int], _opt("--threads", help=(
        "onnxruntime intra-op threads for the gate (and sd's prompt runs). Default: onnxruntime's."))], None),
    "percentile": (Annotated[Optional[float], _opt("--percentile", help=(
        "With --calib-method percentile: the |x| percentile kept per range. Default: 99.999 (detr 99.99)."))], None),
    "weight_rounding": (Annotated[Optional[str], _opt("--weight-rounding", help=(
        "nearest | gptq (conv weights rounded to int8 against the calibration images' activations). Default: "
        "nearest (detr gptq)."))], None),
    "ort_ops": (Annotated[Optional[str], _opt("--ort-ops", help=(
        "What the ort placement quantizes: all (every op with an onnxruntime integer kernel) | compute (Conv/MatMul/"
        "Gemm only). Default: all (textdet without --holdout: compute, more accurate with every conv INT8)."))], None),
    "bias_correction": (Annotated[Optional[bool], _opt("--bias-correction/--no-bias-correction", help=(
        "The openvino placement's quantized convs absorb the mean shift of their own rounding, measured once on the "
        "first 8 calibration images (NNCF's fast bias correction, vkt's own code). Default: textdet on, others off."))],
        None),
    "float_precision": (Annotated[Optional[str], _opt("--float-precision", metavar="auto|f32|bf16", help=(
        "What OpenVINO runs the layers the openvino placement keeps in float in, as its gate scores and times them "
        "and the runtime runs them: auto (bf16 where the CPU computes it natively, OpenVINO's own default there; "
        "else f32) | f32 | bf16 (an error where the CPU lacks it). A CPU without native bf16 runs a bf16-gated "
        "graph in f32. Default: textdet auto, others f32."))], None),
    "exclude": (Annotated[Optional[list[str]], _opt("--exclude", metavar="NODE", help="Node name kept in float, repeatable.")], None),
    "shape": (Annotated[Optional[list[str]], _opt("--shape", "-s", metavar="HxW", help=(
        "Calibrate at HEIGHTxWIDTH, repeatable (images cycle through them). Default: the manifest's resize rule, or "
        "shapes inside the profile."))], None),
    "steps": (Annotated[Optional[str], _opt("--steps", metavar="K,K,...", help=(
        "With --holdout: layers kept in float per gate step, e.g. 0,2,4,8,16. Default: the family's (textdet every "
        "4th conv up to 64, detr its keep-list groups, else 0,4,8,16,24,32,48)."))], None),
    "ranking": (Annotated[Optional[str], _opt("--ranking", help=(
        "With --holdout: what the gate keeps in float first: prefix (the graph from its input up to the k-th "
        "conv/matmul) | tensor (the tensors whose quantization alone costs most) | jump | sensitivity. Default: "
        "the family's (textdet prefix, detr its keep-list, else tensor)."))], None),
    "holdout_labels": (Annotated[bool, _opt("--holdout-labels", help=(
        "With --holdout, textdet: also bound the hmean drop vs ICDAR labels (gt_<image>.txt) beside the held-out "
        "images. Off by default: that hmean flips with boxes near IoU 0.5."))], False),
    "calib_steps": (Annotated[Optional[int], _opt("--calib-steps", help=(
        "sd: DDIM steps per calibration prompt. Default: 8."))], None),
    "qat": (Annotated[bool, _opt("--qat", help=(
        "With --holdout, textdet: also fine-tune the reference PyTorch module under fake quantization; the gate "
        "ships QAT or PTQ."))], False),
    "qat_steps": (Annotated[int, _opt("--qat-steps", help="With --qat: optimizer steps.")], 150),
    "qat_minutes": (Annotated[float, _opt("--qat-minutes", help="With --qat: wall-clock cap in minutes.")], 10.0),
    "qat_checkpoint": (Annotated[Optional[Path], _opt("--qat-checkpoint", help=(
        "With --qat: checkpoint file (saved atomically, resumed)."))], None),
}
INT8_FLAG = (Annotated[bool, _opt("--int8", help=(
    "Calibrate once and add INT8 Q/DQ graphs (one per --target), judged on --holdout images when given. "
    "Each family's recipe sets the defaults below."))], False)


def flag_of(name: str) -> str:
    """The option's flag, e.g. "max_drop" -> "--max-drop"."""
    return "--int8" if name == "int8" else OPTIONS[name][0].__metadata__[0].default  # in Annotated: the first decl


def int8_options(with_flag: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command the INT8 options (``with_flag``: behind ``--int8``, as `vkt export`; else always on, as
    `vkt quantize`). The command declares a parameter ``int8`` and receives an Int8Config there, or None without
    ``--int8``; the options' values are checked (:func:`int8_config`) before the command runs."""
    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command)
        # the command's own options, their annotations evaluated (``int8``'s may name a type imported for checkers only)
        params = [p.replace(annotation=eval(p.annotation, command.__globals__) if isinstance(p.annotation, str)  # noqa: S307
                            else p.annotation) for p in own.parameters.values() if p.name != "int8"]
        added = ({"int8": INT8_FLAG} if with_flag else {}) | OPTIONS
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
                   for n, (a, d) in added.items()]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in added}
            return command(**kwargs, int8=int8_config(values.pop("int8", True), **values))

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap


def int8_config(int8: bool, **values: Any) -> Any:
    """The Int8Config of the options' values (None without ``int8``, when no INT8 option may be given).

    Raises InputError / CalibrationError naming the option for a bad value; files are checked later, by the recipe.
    """
    from vkt.calibration.config import Int8Config
    from vkt.errors import InputError

    if not int8:
        given = [flag_of(n) for n, v in values.items() if v != OPTIONS[n][1] and v not in (None, [], ())]
        if given:
            raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used with --int8")
        return None
    v = dict(values)
    return Int8Config(calib=v.pop("calib"), holdout=v.pop("holdout"), targets=tuple(v.pop("target") or ()) or None,
                      exclude=tuple(v.pop("exclude") or ()), shapes=_shapes(v.pop("shape")), steps=_steps(v.pop("steps")),
                      **v)


def _steps(text: str | None) -> tuple[int, ...] | None:
    from vkt.errors import InputError

    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InputError(f"--steps must be comma-separated layer counts like 0,2,4,8,16; got {text!r}") from None


def _shapes(texts: list[str] | None) -> tuple[tuple[int, int], ...] | None:
    if not texts:
        return None
    return tuple(parse_hw(t) for t in texts)


def parse_hw(text: str) -> tuple[int, int]:
    """``"736x736"`` -> (736, 736)."""
    from vkt.errors import InputError

    h, sep, w = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(h), int(w)
    except ValueError:
        raise InputError(f"--shape must look like HEIGHTxWIDTH (e.g. 736x736), got {text!r}") from None


def check_int8(recipe: Any, config: Any, family: str) -> None:
    """Every cheap check of an INT8 run for ``recipe``'s family, before any work: --qat's reference module
    (vkt.training.qat), then options and files."""
    if config.qat:
        from vkt.training.qat import check_family

        check_family(family)
    recipe.check(config)


def quantize_with(recipe: Any, bundle: Any, config: Any, component: str | None = None) -> dict[str, Any]:
    """Run ``recipe`` on ``bundle`` as the commands do: a warning when INT8 ships ungated, QAT as a further gate
    candidate with --qat. Returns the manifest's calibration section."""
    from vkt.log import get_logger

    log = get_logger(__name__)
    if not recipe.judges:
        log.warning("family %r has no accuracy gate yet: its INT8 graphs ship unjudged; measure them before serving",
                    recipe.family)
    elif not config.gated:
        log.warning("no --holdout: the INT8 graphs ship without the accuracy gate (pass --holdout DIR, or --holdout auto "
                    "to hold out every 4th --calib image)")
    extra = []
    if config.qat:
        from vkt.training.qat import QatConfig, qat_factory

        extra.append(qat_factory(QatConfig(steps=config.qat_steps, minutes=config.qat_minutes,
                                           checkpoint=str(config.qat_checkpoint) if config.qat_checkpoint else None)))
    return recipe.quantize(bundle, config, extra_candidates=extra, component=component)
