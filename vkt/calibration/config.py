"""Int8Config: the INT8 options of one run, carried from the command line (or an API call) to a family's recipe."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vkt.errors import CalibrationError, InputError

TARGETS = ("ort", "trt", "openvino")
DEFAULT_TARGETS = ("ort", "trt")  # what a recipe without its own default writes
WEIGHT_ROUNDING = ("gptq", "nearest")
DATA_KINDS = ("images", "prompts")


@dataclass(frozen=True)
class Int8Config:
    """What to calibrate on, how to judge it and what to ship. ``None`` means "the recipe's default": the family's
    recipe (:func:`vkt.models.recipe_for`) fills those in; the calibration functions read the filled-in values.

    Values are checked when the config is made (bad ones raise CalibrationError naming the option); :meth:`check`
    then checks the files, in well under a second, before any model is loaded.

    Fields, with the option that sets each and its default:
        calib (--calib): a folder of representative images; for prompt-calibrated families (sd) a UTF-8 text file
            of prompts, one per line (None there: the recipe's built-in prompts).
        holdout (--holdout): a folder of held-out images (none of them in ``calib``): the accuracy gate runs on them;
            "auto": every 4th ``calib`` image is held out (and left out of calibration) when it holds 8 or more;
            None (default): INT8 ships ungated.
        max_drop (--max-drop): allowed drop of the recipe's metric vs FP32, in points (1.0 = 0.01); None: the
            recipe's budget.
        on_fail (--on-fail): when no gate step fits: "fp32" (default: ship no INT8 graph) or "best".
        min_speedup (--min-speedup): the least speed-up over FP32, as the gate times it, that ships INT8 (below it FP32
            ships, and the manifest and log say why); None: 1.1; 0: any.
        targets (--target): placements written: "ort" (onnxruntime CPU), "trt" (TensorRT), "openvino" (OpenVINO CPU);
            None: the recipe's (textdet all three, others ort and trt).
        method (--calib-method): "minmax", "percentile" or "entropy"; None: the recipe's.
        num_images (--num-images): calibrate on at most this many images (prompts); None: all.
        threads (--threads): onnxruntime intra-op threads for the gate (and prompt captures); None: onnxruntime's.
        percentile (--percentile): with method "percentile", the |x| percentile kept per range; None: the recipe's.
        weight_rounding (--weight-rounding): "nearest" or "gptq" (conv weights rounded against the calibration
            activations); None: the recipe's.
        ort_ops (--ort-ops): what the "ort" placement quantizes: "all" or "compute" (Conv/MatMul/Gemm only);
            None: the recipe's.
        bias_correction (--bias-correction / --no-bias-correction): the "openvino" placement's quantized convs absorb
            the mean shift of their own rounding, measured once on the first calibration images
            (:mod:`vkt.calibration.bias`); None: the recipe's (textdet on, others off).
        float_precision (--float-precision): what OpenVINO runs the layers the "openvino" placement keeps in float
            in, gated and at run time: "auto" (bf16 where the CPU has it natively, else f32), "f32" or "bf16"; None:
            the recipe's (textdet auto, others f32).
        exclude (--exclude): node names kept in float in every placement; default none.
        shapes (--shape): calibrate at these (H, W), images cycling through them; None: the manifest's resize
            rule, or shapes inside the profile when it has none.
        steps (--steps): layers kept in float per gate step; None: the recipe's.
        ranking (--ranking): what the gate keeps in float first ("tensor", "jump", "sensitivity", "prefix");
            None: the recipe's.
        holdout_labels (--holdout-labels): text detection: also bound the drop vs ICDAR labels beside the
            held-out images; default off.
        calib_steps (--calib-steps): prompt families: denoising steps per calibration prompt; None: the recipe's.
        qat (--qat), qat_steps (--qat-steps, 150), qat_minutes (--qat-minutes, 10), qat_checkpoint
            (--qat-checkpoint): quantization-aware distillation as a further gate candidate (needs a holdout).
    """

    calib: Path | None = None
    holdout: Path | str | None = None
    max_drop: float | None = None
    on_fail: str = "fp32"
    min_speedup: float | None = None
    targets: tuple[str, ...] | None = None
    method: str | None = None
    num_images: int | None = None
    threads: int | None = None
    percentile: float | None = None
    weight_rounding: str | None = None
    ort_ops: str | None = None
    bias_correction: bool | None = None
    float_precision: str | None = None
    exclude: tuple[str, ...] = ()
    shapes: tuple[tuple[int, int], ...] | None = None
    steps: tuple[int, ...] | None = None
    ranking: str | None = None
    holdout_labels: bool = False
    calib_steps: int | None = None
    qat: bool = False
    qat_steps: int = 150
    qat_minutes: float = 10.0
    qat_checkpoint: Path | None = None

    def __post_init__(self) -> None:
        from vkt.calibration.gate import ON_FAIL, check_steps
        from vkt.calibration.holdout import AUTO
        from vkt.calibration.qdq import ORT_OPS
        from vkt.calibration.ranges import METHODS
        from vkt.calibration.rankings import RANKING_METHODS

        def one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
            if value is not None and value not in choices:
                allowed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
                raise CalibrationError(f"{name} must be {allowed}, got {value!r}")

        def positive(name: str, value: Any, kind: type = int) -> None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (kind, int)) or not value > 0):
                raise InputError(f"{name} must be >= 1, got {value!r}" if kind is int else f"{name} must be > 0, got {value!r}")

        s = object.__setattr__
        if self.calib is not None:
            s(self, "calib", Path(self.calib))
        if self.holdout is not None:
            s(self, "holdout", AUTO if str(self.holdout) == AUTO else Path(self.holdout))
        if self.qat_checkpoint is not None:
            s(self, "qat_checkpoint", Path(self.qat_checkpoint))
        if self.targets is not None:
            targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
            if not targets or any(t not in TARGETS for t in targets):
                raise CalibrationError(f"targets must be a non-empty subset of {list(TARGETS)}, got {list(targets)}")
            s(self, "targets", tuple(dict.fromkeys(targets)))
        s(self, "exclude", (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude))
        one_of("calibration method", self.method, METHODS)
        one_of("--on-fail", self.on_fail, ON_FAIL)
        one_of("--weight-rounding", self.weight_rounding, WEIGHT_ROUNDING)
        one_of("--ort-ops", self.ort_ops, ORT_OPS)
        one_of("--ranking", self.ranking, RANKING_METHODS)
        from vkt.runtime.openvino import FLOAT_PRECISIONS  # lazily: numpy, which a bare config does not need

        one_of("--float-precision", self.float_precision, FLOAT_PRECISIONS)
        positive("--num-images", self.num_images)
        positive("--threads", self.threads)
        positive("--calib-steps", self.calib_steps)
        positive("--qat-steps", self.qat_steps)
        positive("--qat-minutes", self.qat_minutes, float)
        d = self.max_drop
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d) or not 0 <= d < 100):
            raise InputError(f"--max-drop is in points of the metric (1.0 = 0.01), in [0, 100); got {d!r}")
        m = self.min_speedup
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0):
            raise InputError(f"--min-speedup is a speed-up over FP32 >= 0 (1.1 = 10% faster, 0: any), got {m!r}")
        p = self.percentile
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100):
            raise InputError(f"--percentile must be in (0, 100], got {p!r}")
        if self.steps is not None:
            s(self, "steps", tuple(check_steps(self.steps)))
        if self.shapes is not None:
            s(self, "shapes", tuple(_shape(x) for x in self.shapes))
        # 2. Options of the accuracy gate need held-out images
        if self.holdout is None:
            if self.qat:
                raise CalibrationError("--qat needs --holdout DIR (or auto): the accuracy gate decides whether the QAT "
                                       "or the PTQ model ships")
            given = [f for f, v in (("--max-drop", self.max_drop), ("--steps", self.steps), ("--ranking", self.ranking),
                                    ("--min-speedup", self.min_speedup),
                                    ("--holdout-labels", self.holdout_labels or None)) if v is not None]
            if given:
                raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used with --holdout "
                                 "(the accuracy gate)")
        if self.qat_checkpoint is not None and not self.qat:
            raise InputError("--qat-checkpoint is only used with --qat")

    @property
    def gated(self) -> bool:
        """Whether held-out images were asked for (the gate runs unless "auto" finds too few images)."""
        return self.holdout is not None

    def filled(self, **defaults: Any) -> Int8Config:
        """This config with its unset (None) options taken from ``defaults`` (a recipe's)."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def check(self, data: str = "images") -> None:
        """The cheap checks of the files, before any work: ``data`` is what the recipe calibrates on.

        "images": ``calib`` is a folder holding images, a holdout folder holds images and none of them is a
        calibration image. "prompts": ``calib``, when given, is a
        text file with at least one prompt. Raises CalibrationError / InputError naming the path.
        """
        from vkt.calibration.data import calibration_images
        from vkt.calibration.holdout import AUTO, holdout_images

        if data not in DATA_KINDS:
            raise CalibrationError(f"data must be one of {', '.join(DATA_KINDS)}, got {data!r}")
        if data == "prompts":
            if self.calib is not None:
                read_prompts(self.calib)
            return
        if self.calib is None:
            raise InputError("INT8 needs calibration images: pass --calib DIR (a folder of representative images)")
        calib_paths = calibration_images(self.calib, self.num_images)
        if self.holdout is not None and self.holdout != AUTO:
            held = holdout_images(self.holdout)
            same = {p.resolve() for p in held} & {p.resolve() for p in calib_paths}
            if same:
                raise InputError(f"held-out images must not be calibration images: {sorted(p.name for p in same)[:5]} "
                                 f"are in both --calib {str(self.calib)!r} and --holdout {str(self.holdout)!r}")

    def inputs(self) -> list[Path]:
        """The paths this config reads (for output-path checks: no output may land on an input)."""
        return [p for p in (self.calib, self.holdout) if isinstance(p, Path)]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped); CalibrationError when there is none."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"calibration prompts must be a text file, one prompt per line; {str(p)!r} "
                               f"{'is a folder' if p.is_dir() else 'not found'}")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (UnicodeDecodeError, OSError) as e:
        raise CalibrationError(f"calibration prompts {str(p)!r} cannot be read as UTF-8 text: {e}") from None
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise CalibrationError(f"calibration prompts file {str(p)!r} holds no prompt (one per line)")
    return prompts


def _shape(s: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s)
    except (TypeError, ValueError):
        raise InputError(f"--shape must be HEIGHTxWIDTH, e.g. 736x736; got {s!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"--shape must be positive, got {h}x{w}")
    return h, w
