"""Quantization-aware distillation: fine-tune the reference PyTorch module under the ORT placement's fake quantization.

    cand = qat_candidate(bundle, image_paths, preprocess, config=QatConfig(steps=200, minutes=10))
    # -> GateCandidate("qat", prepared FP32 graph of the fine-tuned student, its CalibrationTable)
    recipe.quantize(bundle, int8_config, extra_candidates=[qat_factory(QatConfig())])   # as `--qat` does

1. teacher = the bundle's FP32 weights imported into the reference module (text detection:
   transformers' PP-OCRv5 mobile via :mod:`vkt.models.textdet.loader`), folded as exported
   (one conv per RepLayer, BN folded: :func:`fuse_for_export`), eval mode;
2. the student (a copy) is exported once and calibrated with :func:`compute_ranges`; each
   Conv/ConvTranspose is matched to its ONNX node (call order, weight shape and direction);
3. every conv of the student fake-quantizes as onnxruntime's CPU placement quantizes it
   (:mod:`vkt.training.fake_quant`); scales stay fixed (the weights learn to sit on the grid);
4. loss: MSE (or BCE) between student and teacher probability maps on random crops/scales of the
   unlabeled calibration images; Adam; bounded by ``steps`` and ``minutes``; checkpoints are
   written atomically (state_dict + optimizer + step) and resumed;
5. the student is exported with :func:`export_textdet` and its table is the calibration ranges
   with every conv input set to the trained fake-quant range, so ``place_ort`` / ``place_trt``
   write exactly the quantization the student was trained under.

Fake quantization covers conv inputs and weights; the ORT placement also quantizes the outputs of
Add/Resize/Concat/Sigmoid, which the student sees in float (a documented approximation).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import CalibrationError, ModelError
from vkt.fsutil import atomic_open
from vkt.log import get_logger, progress, timed
from vkt.training.fake_quant import conv_modules, match_onnx_convs, unwrap_convs, wrap_convs

log = get_logger(__name__)

REFERENCE_FAMILIES = {"textdet": "transformers PPOCRV5MobileDetForObjectDetection (vkt.models.textdet.loader)"}
LOSSES = ("mse", "bce")


@dataclass(frozen=True)
class QatConfig:
    """Bounds and settings of the distillation run (defaults fit a 2-core CPU in a few minutes).

    steps: optimizer steps (default 150); minutes: wall-clock cap (default 10; None: none);
    batch: crops per step (2); crop: crop side in pixels, multiple of 32 (320); lr: Adam learning
    rate (1e-5, cosine-decayed); loss: "mse" or "bce" between probability maps; checkpoint: file to
    save to and resume from (None: none); checkpoint_every: steps between saves (25); seed (0);
    threads: torch intra-op threads (None: torch's default); synth_p: share of crops drawn from
    :func:`vkt.training.synth_text.render_synth` (words on photos) rather than the calibration
    images (0.5: photos alone carry almost no text, and distilling on them teaches the student
    to suppress text — measured: 12 steps on text-free photos dropped hmean vs FP32 from 0.93 to 0.57).
    """

    steps: int = 150
    minutes: float | None = 10.0
    batch: int = 2
    crop: int = 320
    lr: float = 1e-5
    loss: str = "mse"
    checkpoint: str | None = None
    checkpoint_every: int = 25
    seed: int = 0
    threads: int | None = None
    synth_p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CalibrationError(f"QAT {name} must be a positive integer, got {v!r}")
        if self.minutes is not None and (isinstance(self.minutes, bool) or not isinstance(self.minutes, (int, float))
                                         or not self.minutes > 0):
            raise CalibrationError(f"QAT minutes must be a positive number (or unset: no time cap), got {self.minutes!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 64 or self.crop % 32:
            raise CalibrationError(f"QAT crop must be a multiple of 32, at least 64, got {self.crop!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise CalibrationError(f"QAT lr must be in (0, 1), got {self.lr!r}")
        if isinstance(self.synth_p, bool) or not isinstance(self.synth_p, (int, float)) or not 0 <= self.synth_p <= 1:
            raise CalibrationError(f"QAT synth_p must be in [0, 1], got {self.synth_p!r}")
        if self.loss not in LOSSES:
            raise CalibrationError(f"QAT loss must be one of {list(LOSSES)}, got {self.loss!r}")


def check_family(family: str, name: str = "the bundle") -> None:
    """CalibrationError naming the family when vkt has no reference module to fine-tune for it (cheap: no torch)."""
    if family not in REFERENCE_FAMILIES:
        raise CalibrationError(f"--qat needs a reference PyTorch module to fine-tune; {name} is family "
                               f"{family!r}, which has none (QAT supports: {', '.join(REFERENCE_FAMILIES)}). "
                               "Use the accuracy gate alone (--holdout, --max-drop)")


def reference_module_for(bundle: Any, component: str = "model") -> Callable[[], Any]:
    """A zero-argument loader of the bundle's reference PyTorch module (no torch import yet).

    Raises CalibrationError naming the family when vkt has no reference module for it.
    """
    check_family(bundle.family, f"bundle {bundle.name!r}")
    path = bundle.path("fp32 onnx", component)

    def load() -> Any:
        from vkt.models.textdet.loader import default_onnx_path, load_ppocrv5_mobile_det

        try:
            return load_ppocrv5_mobile_det(path)
        except (ModelError, Exception) as e:
            why = str(e).splitlines()[0][:300]
        # vkt's FP32 rewrites (learnable-affine scales folded into the convs, HardSwish fused) leave a graph whose
        # records the importer cannot map back; the zoo's source ONNX imports, and stands in when it computes the same.
        try:
            source = default_onnx_path()
        except Exception:
            source = None
        if source is not None and same_function(source, path):
            log.info("QAT: %s is vkt's rewrite of the zoo's PP-OCRv5 mobile det (same outputs): importing the source "
                     "ONNX's weights", path.name)
            return load_ppocrv5_mobile_det(source)
        raise CalibrationError(f"--qat: the {bundle.family!r} reference module is PP-OCRv5 mobile, and the weights of "
                               f"{path.name!r} do not import into it ({why})")

    return load


def same_function(a: Any, b: Any, atol: float = 1e-3) -> bool:
    """Whether two text detectors (single-input ONNX graphs, probability map out) give the same map, within ``atol``,
    on a probe of three printed text lines (128x256, (x/255 - 0.5)/0.5) on onnxruntime CPU. Random inputs leave
    PP-OCRv5's map at ~0 everywhere, so they cannot tell two detectors apart; printed text lights a seventh of it.
    False when either graph cannot run the probe or the probe lights nothing."""
    import cv2

    from vkt.runtime.ort import OrtRunner

    img = np.full((128, 256, 3), 255, np.uint8)
    for i, text in enumerate(("vkt probe 123", "ONNX text 45", "detector 6789")):
        cv2.putText(img, text, (8, 36 + 36 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    x = np.ascontiguousarray(((img.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None])
    try:
        with OrtRunner(str(a), threads=1) as ra, OrtRunner(str(b), threads=1) as rb:
            if len(ra.spec.inputs) != 1 or len(rb.spec.inputs) != 1:
                return False
            ya = list(ra.infer({ra.spec.inputs[0].name: x}, check=False).values())
            yb = list(rb.infer({rb.spec.inputs[0].name: x}, check=False).values())
    except Exception:
        return False
    return (len(ya) == len(yb) == 1 and np.shape(ya[0]) == np.shape(yb[0]) and float(np.max(ya[0])) > 0.5
            and bool(np.allclose(ya[0], yb[0], atol=atol, rtol=0)))


# ---- data ----------------------------------------------------------------------------------------
def _crops(images: Sequence[np.ndarray], cfg: QatConfig, rng: np.random.Generator,
           synth: Callable[[int], np.ndarray] | None = None) -> Any:
    """A batch ``[batch, 3, crop, crop]``: with probability ``synth_p`` a synthetic image ``synth(i)``, else a
    random rescale (0.5-1.5x) and crop of a pre-processed image."""
    import torch
    import torch.nn.functional as F

    out = []
    for _ in range(cfg.batch):
        if synth is not None and rng.random() < cfg.synth_p:
            out.append(torch.from_numpy(synth(int(rng.integers(1 << 30)))))
            continue
        x = torch.from_numpy(images[int(rng.integers(len(images)))])  # [1, 3, H, W]
        s = float(rng.uniform(0.5, 1.5))
        h, w = x.shape[2:]
        s = max(s, cfg.crop / min(h, w))  # the crop must fit
        x = F.interpolate(x, size=(max(cfg.crop, round(h * s)), max(cfg.crop, round(w * s))), mode="bilinear",
                          align_corners=False)
        top = int(rng.integers(x.shape[2] - cfg.crop + 1))
        left = int(rng.integers(x.shape[3] - cfg.crop + 1))
        out.append(x[:, :, top:top + cfg.crop, left:left + cfg.crop])
    return torch.cat(out)


# ---- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, student: Any, optimizer: Any, step: int, extra: Mapping[str, Any]) -> None:
    """torch.save of {student, optimizer, step, **extra} to a temp file, fsync, rename (never half-written)."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "step": int(step), **extra}, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict (``torch.load(weights_only=True)``: no pickled code runs); CalibrationError if unreadable."""
    import torch

    try:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CalibrationError(f"QAT checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                               "delete it to start over") from None
    if not isinstance(ck, dict) or not {"student", "optimizer", "step"} <= set(ck):
        raise CalibrationError(f"QAT checkpoint {str(path)!r} is not a vkt QAT checkpoint (keys {sorted(ck) if isinstance(ck, dict) else type(ck).__name__})")
    return ck


# ---- the run -------------------------------------------------------------------------------------
def distill(teacher: Any, student: Any, images: Sequence[np.ndarray], cfg: QatConfig, *, resume_key: str = "",
            synth: Callable[[int], np.ndarray] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``student`` (QConv-wrapped) towards ``teacher``'s probability maps; returns a report.

    ``images``: pre-processed ``[1, 3, H, W]`` float32 arrays; ``synth(i)``: an optional source of
    pre-processed synthetic crops ``[1, 3, crop, crop]``. ``resume_key`` identifies the model
    and ranges: a checkpoint saved under another key is refused.
    """
    import torch

    if not images:
        raise CalibrationError("QAT needs at least one training image")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    start = 0
    if cfg.checkpoint and Path(cfg.checkpoint).is_file():
        ck = load_checkpoint(cfg.checkpoint)
        if ck.get("key") != resume_key:
            raise CalibrationError(f"QAT checkpoint {cfg.checkpoint!r} belongs to another model or calibration "
                                   f"(key {str(ck.get('key'))[:16]}…, expected {resume_key[:16]}…); delete it or pick another path")
        student.load_state_dict(ck["student"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
        log.info("resumed QAT from %s at step %d", cfg.checkpoint, start)
    rng = np.random.default_rng(cfg.seed + start)
    deadline = time.monotonic() + 60 * cfg.minutes if cfg.minutes else math.inf
    losses: list[float] = []
    step = start
    student.eval()  # no BatchNorm or dropout left after folding: eval keeps the maths identical to export
    with timed(f"QAT distillation ({cfg.steps} steps max)", log):
        for step in progress(range(start, cfg.steps), "QAT", total=max(0, cfg.steps - start), enabled=show_progress):
            if time.monotonic() > deadline:
                log.warning("QAT stopped at step %d of %d: --qat-minutes %.1f reached", step, cfg.steps, cfg.minutes)
                break
            for g in opt.param_groups:  # cosine decay to 10%
                g["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
            x = _crops(images, cfg, rng, synth)
            with torch.no_grad():
                target = teacher(x, return_dict=False)[0]
            pred = student(x, return_dict=False)[0]
            if cfg.loss == "mse":
                loss = torch.nn.functional.mse_loss(pred, target)
            else:
                loss = torch.nn.functional.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if cfg.checkpoint and (step + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(cfg.checkpoint, student, opt, step + 1, {"key": resume_key})
        else:
            step = cfg.steps
    done = step if losses or start >= cfg.steps else start
    if cfg.checkpoint and losses:
        save_checkpoint(cfg.checkpoint, student, opt, done, {"key": resume_key})
    head, tail = losses[:10], losses[-10:]
    return {"steps": done, "resumed_from": start, "loss": cfg.loss,
            "loss_first": float(np.mean(head)) if head else None, "loss_last": float(np.mean(tail)) if tail else None}


def _synth_source(bundle: Any, cfg: QatConfig) -> Callable[[int], np.ndarray] | None:
    """``synth(i) -> [1, 3, crop, crop]`` synthetic words on photos, normalised as the bundle's manifest says (None if unavailable)."""
    if cfg.synth_p == 0:
        return None
    try:
        from vkt.training.synth_text import SynthConfig, render_synth, resolve_scripts

        sc = SynthConfig(size=(cfg.crop, cfg.crop), text_height=(12, max(13, cfg.crop // 6)))
        fonts = resolve_scripts(sc.scripts)
    except Exception as e:  # fonts or the training extra missing: photos alone, said loudly
        log.warning("QAT: no synthetic text (%s); distilling on the calibration photos alone", str(e).splitlines()[0][:200])
        return None
    pre = bundle.preprocess
    scale = float(pre.get("scale", 1 / 255))
    mean = np.asarray(pre.get("mean", (0.0, 0.0, 0.0)), np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.get("std", (1.0, 1.0, 1.0)), np.float32).reshape(3, 1, 1)
    rgb = pre.get("color", "BGR") == "RGB"

    def synth(i: int) -> np.ndarray:
        img = render_synth(i, seed=cfg.seed, config=sc, fonts=fonts).image  # BGR uint8 [crop, crop, 3]
        img = img[:, :, ::-1] if rgb else img
        x = (img.transpose(2, 0, 1).astype(np.float32) * scale - mean) / std
        return np.ascontiguousarray(x[None])

    return synth


def _export_spec(spec: Any) -> Any:
    """The bundle's I/O names and profiles with the detector's export shapes (exporters name the channel axis oddly)."""
    from vkt.specs import ExportSpec, TensorSpec

    i, o = spec.inputs[0], spec.outputs[0]
    return ExportSpec((TensorSpec(i.name, "float32", ("batch", 3, "height", "width")),),
                      (TensorSpec(o.name, "float32", ("batch", 1, "height", "width")),), spec.profiles, 17)


def qat_candidate(bundle: Any, image_paths: Sequence[Path], preprocess: Callable[[Path], Mapping[str, np.ndarray]], *,
                  method: str = "percentile", percentile: float = 99.999, config: QatConfig | None = None,
                  component: str = "model", show_progress: bool = True) -> Any:
    """Distil the bundle's reference module under fake quantization; return ``GateCandidate("qat", ...)``.

    ``image_paths`` are the calibration images (unlabeled), ``preprocess(path)`` the bundle's
    pre-processing (``{input: [1, 3, H, W] float32}``). Steps 1-5 of the module docstring.
    """
    import torch

    from vkt.calibration.gate import GateCandidate
    from vkt.calibration.ranges import (
        CalibrationTable,
        compute_ranges,
        model_sha256,
        prepare_model,
    )
    from vkt.models.textdet.export import export_textdet, fuse_for_export
    from vkt.onnxio import load_onnx

    cfg = config or QatConfig()
    load = reference_module_for(bundle, component)
    spec = _export_spec(bundle.spec(component))
    feeds = []
    for p in image_paths:
        try:
            feeds.append({k: np.asarray(v, np.float32) for k, v in dict(preprocess(p)).items()})
        except Exception as e:
            log.warning("QAT: skipping image %s: %s", Path(p).name, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    if not feeds:
        raise CalibrationError("QAT found no usable training image among the calibration images")
    name = spec.inputs[0].name
    images = [f[name] for f in feeds]

    with tempfile.TemporaryDirectory(prefix="vkt-qat-") as tmp:
        # 1-2. Teacher, student, calibration of the student's own graph, conv <-> ONNX node map
        with timed("QAT: loading the reference module", log):
            teacher = fuse_for_export(load()).eval()
        student = copy.deepcopy(teacher)
        export_textdet(student, Path(tmp) / "init.onnx", spec=spec, fuse=False)
        init = prepare_model(load_onnx(Path(tmp) / "init.onnx"))
        table0 = compute_ranges(init, feeds, method, percentile=percentile, show_progress=show_progress)
        convs = conv_modules(student)
        tensor_of = match_onnx_convs(convs, init)
        missing = [t for t in tensor_of.values() if t not in table0]
        if missing:
            raise ModelError(f"QAT: no calibration range for conv input(s) {missing[:4]}")
        ranges = {m: table0.ranges[t] for m, t in tensor_of.items()}
        # 3-4. Fake quantization and distillation
        wrap_convs(student, ranges)
        key = model_sha256(init) + table0.sha256 + f"{cfg.crop}:{cfg.batch}:{cfg.loss}"
        import hashlib

        key = hashlib.sha256(key.encode()).hexdigest()
        report = distill(teacher, student, images, cfg, resume_key=key, synth=_synth_source(bundle, cfg),
                         show_progress=show_progress)
        # 5. Export the student; its table: fresh ranges for every tensor, the trained ones at conv inputs
        plain = unwrap_convs(student).eval()
        with torch.no_grad():
            export_textdet(plain, Path(tmp) / "qat.onnx", spec=spec, fuse=False)
        qat = prepare_model(load_onnx(Path(tmp) / "qat.onnx"))
        fresh = compute_ranges(qat, feeds, method, percentile=percentile, show_progress=show_progress)
        trained = match_onnx_convs(conv_modules(plain), qat)
        merged = dict(fresh.ranges)
        for mod, tensor in trained.items():
            merged[tensor] = ranges[mod]
        table = CalibrationTable(merged, method, fresh.num_samples, model_sha256(qat),
                                 {**fresh.options, "qat": {"convs": len(trained), **report}})
    log.info("QAT: %d steps, %s loss %.3g -> %.3g", report["steps"], cfg.loss, report["loss_first"] or float("nan"),
             report["loss_last"] or float("nan"))
    return GateCandidate("qat", qat, table, meta={"config": {k: v for k, v in asdict(cfg).items()}, **report})


def qat_factory(config: QatConfig | None = None, *, show_progress: bool = True) -> Callable[..., Any]:
    """A gate-candidate factory for a recipe's ``extra_candidates``: ``(bundle, image paths, preprocess, int8 config)``
    -> :func:`qat_candidate`, calibrating the student with the run's method and percentile."""
    cfg = config or QatConfig()

    def make(bundle: Any, image_paths: Sequence[Path], preprocess: Callable[[Path], Mapping[str, np.ndarray]],
             int8: Any) -> Any:
        return qat_candidate(bundle, image_paths, preprocess, method=int8.method or "percentile",
                             percentile=99.999 if int8.percentile is None else int8.percentile, config=cfg,
                             show_progress=show_progress)

    return make
