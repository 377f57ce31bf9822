"""Read PaddleOCR's ``inference.yml`` (shipped beside its detectors) into vkt text-detection settings.

PaddleOCR 2.x/3.x (PaddleX) exports write, per model::

    Global: {model_name: PP-OCRv5_mobile_det}
    PreProcess:
      transform_ops:
      - DecodeImage: {img_mode: BGR, channel_first: false}
      - DetResizeForTest: {resize_long: 960}          # or {limit_side_len: 960, limit_type: max}, or null
      - NormalizeImage: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], scale: 1./255., order: hwc}
      - ToCHWImage: null
      - KeepKeys: {keep_keys: [image, shape, polys, ignore_tags]}
    PostProcess: {name: DBPostProcess, thresh: 0.3, box_thresh: 0.6, max_candidates: 1000, unclip_ratio: 1.5}

How each entry becomes a setting (the keys of ``vkt.runtime.textdet.textdet_settings``):

    DecodeImage.img_mode         BGR | RGB -> color (GRAY is refused: vkt feeds 3-channel images)
    DetResizeForTest             null -> limit_side_len 736, limit_type min (PaddleOCR's defaults)
      limit_side_len, limit_type -> the same keys (limit_type min | max)
      resize_long: N             -> limit_side_len N, limit_type max (as PaddleX runs its PP-OCR detectors)
      max_side_limit             -> max_side_len (the long-side cap)
      image_shape                refused: vkt has no fixed-size resize for text detection
    NormalizeImage               mean, std (3 numbers, in the decoded channel order), scale (a number or
                                 a fraction such as "1./255."; default 1/255); absent mean/std -> ImageNet's
    PostProcess (DBPostProcess)  thresh, box_thresh, unclip_ratio, max_candidates, use_dilation, score_mode,
                                 box_type -> the same keys; absent ones take PaddleX's DBPostProcess values
                                 (thresh 0.3, box_thresh 0.6, unclip_ratio 2.0, max_candidates 1000,
                                 use_dilation false, score_mode fast, box_type quad), so the bundle runs the
                                 model as PaddleOCR does

Unknown sections, ops and keys are reported as warnings and ignored; a value of the wrong type raises
InputError naming the key and the value. Needs PyYAML (export time only).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkt.errors import InputError
from vkt.log import get_logger

log = get_logger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# PaddleX's text-detection predictor: DBPostProcess values for keys an inference.yml leaves out.
PADDLE_DB_DEFAULTS = {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 2.0, "max_candidates": 1000,
                      "use_dilation": False, "score_mode": "fast", "box_type": "quad"}
_IGNORED_OPS = ("ToCHWImage", "KeepKeys", "DetLabelEncode")  # nothing to carry: vkt's layout is fixed NCHW
_IGNORED_SECTIONS = ("Global", "Hpi")
_FRACTION = re.compile(r"\s*([0-9.]+(?:[eE][-+]?\d+)?)\s*(?:/\s*([0-9.]+(?:[eE][-+]?\d+)?)\s*)?")


@dataclass(frozen=True)
class PaddleDetConfig:
    """Settings read from one inference.yml.

    settings: flat text-detection settings (``textdet_settings`` keys: limit_side_len, limit_type,
        max_side_len, color, mean, std, scale, thresh, box_thresh, ...).
    model_name: ``Global.model_name`` or None. notes: how entries were mapped or defaulted (for the log).
    """

    path: Path
    settings: dict[str, Any]
    model_name: str | None
    notes: tuple[str, ...]


def _number(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{key} must be a number, got {v!r}")
    return float(v)


def _int(v: Any, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{key} must be a positive integer, got {v!r}")
    return v


def _three(v: Any, key: str) -> list[float]:
    if not isinstance(v, list) or len(v) != 3:
        raise InputError(f"{key} must be a list of 3 numbers, got {v!r}")
    return [_number(x, key) for x in v]


def _scale(v: Any, key: str) -> float:
    """PaddleOCR evaluates a string scale ("1./255."): vkt accepts a number or a fraction of two numbers."""
    if isinstance(v, str):
        m = _FRACTION.fullmatch(v)
        try:
            if m is None:
                raise ValueError
            out = float(m.group(1)) / (float(m.group(2)) if m.group(2) else 1.0)
        except (ValueError, ZeroDivisionError):
            raise InputError(f"{key} must be a number or a fraction such as 1./255., got {v!r}") from None
        return out
    return _number(v, key)


def _mapping(v: Any, key: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InputError(f"{key} must be a mapping of settings, got {v!r}")
    return v


def _warn_unknown(d: dict[str, Any], known: tuple[str, ...], where: str, warnings: list[str]) -> None:
    for k in d:
        if k not in known:
            warnings.append(f"{where}.{k} is not a setting vkt reads; ignored")


def _decode(args: dict[str, Any], out: dict[str, Any], warnings: list[str]) -> None:
    _warn_unknown(args, ("img_mode", "channel_first", "ignore_orientation"), "DecodeImage", warnings)
    mode = args.get("img_mode", "RGB")
    if mode not in ("BGR", "RGB"):
        raise InputError(f"DecodeImage.img_mode must be BGR or RGB (vkt feeds 3-channel images), got {mode!r}")
    if args.get("channel_first", False) is not False:
        raise InputError(f"DecodeImage.channel_first must be false, got {args['channel_first']!r}")
    out["color"] = mode


def _resize(args: dict[str, Any], out: dict[str, Any], notes: list[str], warnings: list[str]) -> None:
    _warn_unknown(args, ("limit_side_len", "limit_type", "resize_long", "max_side_limit"), "DetResizeForTest", warnings)
    if "image_shape" in args or "input_shape" in args:
        raise InputError(f"DetResizeForTest.image_shape (a fixed-size resize) is not supported, got {args!r}; "
                         "expected limit_side_len / limit_type or resize_long")
    if "limit_side_len" in args:
        out["limit_side_len"] = _int(args["limit_side_len"], "DetResizeForTest.limit_side_len")
        kind = args.get("limit_type", "min")
        if kind not in ("min", "max"):
            raise InputError(f"DetResizeForTest.limit_type must be min or max, got {kind!r}")
        out["limit_type"] = kind
    elif "resize_long" in args:
        out["limit_side_len"] = _int(args["resize_long"], "DetResizeForTest.resize_long")
        out["limit_type"] = "max"
        notes.append(f"DetResizeForTest.resize_long {out['limit_side_len']} -> limit_side_len "
                     f"{out['limit_side_len']}, limit_type max (as PaddleX runs its PP-OCR detectors)")
    else:
        out["limit_side_len"], out["limit_type"] = 736, "min"
        notes.append("DetResizeForTest without a limit -> limit_side_len 736, limit_type min (PaddleOCR's default)")
    if "max_side_limit" in args:
        out["max_side_len"] = _int(args["max_side_limit"], "DetResizeForTest.max_side_limit")


def _normalize(args: dict[str, Any], out: dict[str, Any], notes: list[str], warnings: list[str]) -> None:
    _warn_unknown(args, ("mean", "std", "scale", "order"), "NormalizeImage", warnings)
    out["scale"] = _scale(args["scale"], "NormalizeImage.scale") if args.get("scale") is not None else 1.0 / 255.0
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if args.get(key) is None:
            notes.append(f"NormalizeImage.{key} absent -> ImageNet's {default} (PaddleOCR's default)")
            out[key] = list(default)
        else:
            out[key] = _three(args[key], f"NormalizeImage.{key}")


def _postprocess(args: dict[str, Any], out: dict[str, Any], notes: list[str], warnings: list[str]) -> None:
    name = args.get("name")
    if name != "DBPostProcess":
        raise InputError(f"PostProcess.name must be DBPostProcess (a DB text detector), got {name!r}")
    _warn_unknown(args, ("name", *PADDLE_DB_DEFAULTS), "PostProcess", warnings)
    checks = {"thresh": _number, "box_thresh": _number, "unclip_ratio": _number, "max_candidates": _int}
    for key, default in PADDLE_DB_DEFAULTS.items():
        if key not in args:
            out[key] = default
            notes.append(f"PostProcess.{key} absent -> {default!r} (PaddleX's DBPostProcess)")
            continue
        v = args[key]
        if key in checks:
            v = checks[key](v, f"PostProcess.{key}")
        elif key == "use_dilation" and not isinstance(v, bool):
            raise InputError(f"PostProcess.use_dilation must be true or false, got {v!r}")
        elif key in ("score_mode", "box_type") and not isinstance(v, str):
            raise InputError(f"PostProcess.{key} must be a string, got {v!r}")
        out[key] = v


def read_inference_yml(path: str | os.PathLike) -> PaddleDetConfig:
    """Read a PaddleOCR detector's inference.yml (module docstring: the mapping); warnings are logged.

    Raises InputError for a missing or unreadable file, invalid YAML, a non-DB post-process, or a value of
    the wrong type or out of range (the message names the file, the key and the value).
    """
    from vkt.runtime.textdet import textdet_settings
    from vkt.tasks import TASKS

    p = Path(path)
    try:
        import yaml
    except ImportError:
        raise InputError(f"reading {str(p)!r} needs PyYAML: pip install pyyaml") from None
    if not p.is_file():
        raise InputError(f"config file not found: {str(p)!r}; expected PaddleOCR's inference.yml")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{str(p)!r} is not a readable YAML file: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(doc, dict) or "PostProcess" not in doc:
        raise InputError(f"{str(p)!r} is not a PaddleOCR inference.yml: expected a mapping with PreProcess and PostProcess")
    settings: dict[str, Any] = {}
    notes: list[str] = []
    warnings: list[str] = []
    try:
        for k in doc:
            if k not in ("PreProcess", "PostProcess", *_IGNORED_SECTIONS):
                warnings.append(f"section {k} is not one vkt reads; ignored")
        pre = _mapping(doc.get("PreProcess"), "PreProcess")
        _warn_unknown(pre, ("transform_ops",), "PreProcess", warnings)
        ops = pre.get("transform_ops") or []
        if not isinstance(ops, list):
            raise InputError(f"PreProcess.transform_ops must be a list of ops, got {ops!r}")
        seen = set()
        for op in ops:
            if isinstance(op, str):
                op = {op: None}
            if not isinstance(op, dict) or len(op) != 1:
                raise InputError(f"PreProcess.transform_ops entries must be one-key mappings such as "
                                 f"{{NormalizeImage: {{...}}}}, got {op!r}")
            (name, args), = op.items()
            seen.add(name)
            if name == "DecodeImage":
                _decode(_mapping(args, name), settings, warnings)
            elif name == "DetResizeForTest":
                _resize(_mapping(args, name), settings, notes, warnings)
            elif name == "NormalizeImage":
                _normalize(_mapping(args, name), settings, notes, warnings)
            elif name not in _IGNORED_OPS:
                warnings.append(f"PreProcess op {name} is not one vkt reads; ignored")
        if "DecodeImage" not in seen:
            warnings.append("no DecodeImage op: the task's channel order is kept")
        if "NormalizeImage" not in seen:
            warnings.append("no NormalizeImage op: the task's normalisation is kept")
        _postprocess(_mapping(doc["PostProcess"], "PostProcess"), settings, notes, warnings)
        t = TASKS["textdet"]
        textdet_settings(t.preprocess, t.postprocess, settings)  # ranges: thresh in (0, 1), ...
    except InputError as e:
        raise InputError(f"{str(p)!r}: {e}") from None
    for w in warnings:
        log.warning("%s: %s", p.name, w)
    g = doc.get("Global")
    name = g.get("model_name") if isinstance(g, dict) and isinstance(g.get("model_name"), str) else None
    return PaddleDetConfig(p, settings, name, tuple(notes))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PADDLE_DB_DEFAULTS", "PaddleDetConfig", "read_inference_yml"]
