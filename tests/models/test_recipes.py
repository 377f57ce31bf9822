"""The INT8 recipes: one per family from the registry, their defaults, the holdout policy, and the shared image flow
(calibrate, gate on held-out images, every target follows the gate's choice) on the toy model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from vkt.calibration.config import Int8Config
from vkt.calibration.holdout import AUTO, resolve_holdout
from vkt.errors import CalibrationError, InputError, VktError
from vkt.models import recipe_for


def _images(folder: Path, n: int, size: int = 32) -> Path:
    import cv2

    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(folder.name))
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


def test_registry_returns_a_recipe_per_family():
    got = {f: recipe_for(f) for f in ("textdet", "detr", "sd", "generic")}
    assert {f: r.family for f, r in got.items()} == {f: f for f in got}
    assert {f: r.data for f, r in got.items()} == {"textdet": "images", "detr": "images", "sd": "prompts",
                                                   "generic": "images"}
    # the budgets the CLI documents: text hmean 1.0 point, DETR AP 2.0 points; no metric, no gate
    assert {f: r.budget for f, r in got.items()} == {"textdet": 1.0, "detr": 2.0, "sd": None, "generic": None}
    with pytest.raises(InputError, match="no INT8 recipe for family 'segmentation'"):
        recipe_for("segmentation")


def test_recipe_defaults_fill_only_what_the_user_left_unset(tmp_path):
    ungated, gated = Int8Config(calib=tmp_path), Int8Config(calib=tmp_path, holdout=AUTO)
    text = recipe_for("textdet")
    r = text.resolve(ungated)
    assert (r.method, r.percentile, r.weight_rounding, r.ort_ops, r.ranking, r.max_drop) == (
        "percentile", 99.999, "nearest", "compute", None, None)
    r = text.resolve(gated)
    assert (r.ort_ops, r.ranking, r.max_drop) == ("all", "prefix", 1.0)
    r = recipe_for("detr").resolve(gated)
    assert (r.method, r.percentile, r.weight_rounding, r.ort_ops, r.ranking, r.max_drop) == (
        "percentile", 99.99, "gptq", "all", None, 2.0)  # ranking None: the keep-list
    r = recipe_for("sd").resolve(Int8Config())
    assert (r.method, r.calib_steps) == ("minmax", 8)
    assert recipe_for("generic").resolve(ungated).method == "percentile"
    # what the user gives wins
    r = text.resolve(Int8Config(calib=tmp_path, holdout=AUTO, method="minmax", ort_ops="compute", max_drop=0.5))
    assert (r.method, r.ort_ops, r.max_drop) == ("minmax", "compute", 0.5)


def test_holdout_auto_holds_out_every_4th_image_from_8(tmp_path, caplog):
    many = _images(tmp_path / "many", 9)
    split = resolve_holdout(many, AUTO)
    names = sorted(p.name for p in many.iterdir())
    assert [p.name for p in split.held] == [names[3], names[7]] and split.how == "auto"
    assert [p.name for p in split.calib] == [n for n in names if n not in (names[3], names[7])]
    assert split.record() == {"path": str(many), "images": 2, "split": "every 4th calibration image"}
    assert len(resolve_holdout(many, AUTO, num_images=3).calib) == 3
    few = _images(tmp_path / "few", 7)
    with caplog.at_level(logging.WARNING, logger="vkt"):
        split = resolve_holdout(few, AUTO)
    assert not split.held and len(split.calib) == 7 and "ship without the accuracy gate" in caplog.text
    given = resolve_holdout(few, many)
    assert given.how == "given" and len(given.held) == 9 and len(given.calib) == 7
    # "auto" is the word alone: a folder spelled ./auto stays a folder
    assert Int8Config(holdout="auto").holdout == AUTO and Int8Config(holdout="./auto").holdout == Path("auto")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": (0, 2)}, InputError, "--steps is only used with --holdout"),
    ({"max_drop": 1.0, "ranking": "prefix"}, InputError, "--max-drop, --ranking are only used with --holdout"),
    ({"holdout_labels": True}, InputError, "--holdout-labels is only used with --holdout"),
    ({"qat": True}, CalibrationError, "--qat needs --holdout"),
    ({"qat_checkpoint": "q.ckpt"}, InputError, "--qat-checkpoint is only used with --qat"),
    ({"holdout": AUTO, "max_drop": 100.0}, InputError, "--max-drop is in points"),
    ({"percentile": 0}, InputError, "--percentile must be in"),
    ({"weight_rounding": "adaround"}, CalibrationError, "--weight-rounding must be gptq or nearest, got 'adaround'"),
    ({"num_images": 0}, InputError, "--num-images must be >= 1"),
    ({"shapes": ((0, 32),)}, InputError, "--shape must be positive"),
])
def test_int8_config_rejects_bad_values_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        Int8Config(**kwargs)


def test_checks_of_files_and_family(tmp_path):
    calib, hold = _images(tmp_path / "calib", 3), _images(tmp_path / "hold", 2)
    Int8Config(calib=calib, holdout=hold).check()
    with pytest.raises(InputError, match="must not be calibration images"):
        Int8Config(calib=calib, holdout=calib).check()
    with pytest.raises(InputError, match="pass --calib DIR"):
        Int8Config().check()
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CalibrationError, match="holds no prompt"):
        Int8Config(calib=empty).check("prompts")
    Int8Config().check("prompts")  # sd's built-in prompts
    refusals = [("generic", Int8Config(calib=calib, holdout=hold), "no held-out metric for family 'generic'"),
                ("detr", Int8Config(calib=calib, holdout=hold, holdout_labels=True), "family 'detr' has none"),
                ("textdet", Int8Config(calib=calib, calib_steps=4), "--calib-steps is for families calibrated on prompts"),
                ("sd", Int8Config(holdout=AUTO), "SD has no accuracy gate yet"),
                ("sd", Int8Config(shapes=((32, 32),)), "--shape is for families calibrated on images")]
    for family, cfg, match in refusals:
        with pytest.raises(VktError, match=match):
            recipe_for(family).check(cfg)


def quantized_convs(factory) -> int:
    import onnx

    m = onnx.load_from_string(bytes(factory().model))
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in m.graph.node if n.op_type == "Conv" and n.input[0] in dq)


def test_text_recipe_gates_with_its_defaults_and_the_trt_placement_follows(toy_bundle, tmp_path):
    """The shared image flow with the text recipe's defaults and a hand-made metric (1 - 0.01 per INT8 conv of the
    toy's 6): the prefix ranking walks 0, 4 (8 > 6 layers is dropped); 4 convs in float leave 2 INT8 = 2 points,
    within a 2-point budget; the ort placement quantizes every op ("all", gated), and trt keeps the same nodes."""
    import onnx

    from vkt.bundle import Bundle
    from vkt.models.textdet.int8 import TextdetRecipe

    class Recipe(TextdetRecipe):
        def metric(self, bundle, held, config, show_progress=True):
            return lambda factory: 1.0 - 0.01 * quantized_convs(factory)

    Bundle.load(toy_bundle).update(family="textdet")
    calib, hold = _images(tmp_path / "calib", 3), _images(tmp_path / "hold", 1)
    # min_speedup 0: the toy's INT8 is not faster than its FP32 on a 64x64 input (the speed check has its own tests)
    section = Recipe().quantize(toy_bundle, Int8Config(calib=calib, holdout=hold, max_drop=2.0, min_speedup=0),
                                show_progress=False)
    gate = section["gate"]
    assert gate["min_speedup"] == 0.0 and gate["shipped"] == "int8"
    assert [s["layers_kept_float"] for s in gate["steps"]] == [0, 4]
    assert [round(s["metric"], 3) for s in gate["steps"]] == [0.94, 0.98] and gate["chosen"]["step"] == 1
    assert gate["max_drop_points"] == 2.0 and gate["holdout"] == {"path": str(hold), "images": 1, "split": "given"}
    b = Bundle.load(toy_bundle)
    meta = {e.meta["placement"]: e.meta for e in b.files("int8 qdq onnx")}
    assert meta["ort"]["ort_ops"] == "all" and meta["ort"]["excluded"] == meta["trt"]["excluded"]
    assert sorted(meta["trt"]["excluded"]) == sorted(gate["chosen"]["float_layers"]) and "gate" in meta["trt"]
    trt = onnx.load(str(b.root / "model.int8.trt.onnx"))
    dq = {o for n in trt.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert [n.input[0] in dq for n in trt.graph.node if n.op_type == "Conv"] == [False] * 4 + [True] * 2
    # nothing within budget: both placements go (FP32 only ships)
    section = Recipe().quantize(toy_bundle, Int8Config(calib=calib, holdout=hold, max_drop=0.5), show_progress=False)
    assert section["gate"]["chosen"] is None and not Bundle.load(toy_bundle).files("int8 qdq onnx")
