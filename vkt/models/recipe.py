"""A family's INT8 recipe: what it calibrates on, its defaults and budget, how it judges; and the image flow they share.

    recipe = recipe_for(bundle.family)         # vkt.models: textdet, detr, sd, generic
    recipe.check(config)                       # cheap: options and files, before any work
    section = recipe.quantize(bundle, config)  # calibrate, gate on held-out data, record in the manifest

Recipes are written over the public calibration API (vkt.calibration.*), which knows no family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from vkt.calibration.config import Int8Config
from vkt.calibration.gate import DEFAULT_MIN_SPEEDUP, CandidateFactory, GateConfig, Metric
from vkt.errors import CalibrationError, InputError
from vkt.log import get_logger

log = get_logger(__name__)

GATE_ONLY = ("max_drop", "ranking", "steps")  # defaults that apply only when the gate runs


class Recipe:
    """The INT8 recipe of one family. Subclasses set the class attributes and implement :meth:`quantize`.

    family: the manifest's family; data: "images" (a folder, pre-processed as the manifest says) or "prompts";
    budget: the default ``max_drop`` in points of the family's metric (None: no metric of its own, so no gate);
    defaults: :class:`Int8Config` fields filled in when the user leaves them unset; component: what is quantized;
    labels: whether ``holdout_labels`` means something here.
    """

    family: ClassVar[str] = ""
    data: ClassVar[str] = "images"
    budget: ClassVar[float | None] = None
    defaults: ClassVar[Mapping[str, Any]] = {}
    component: ClassVar[str] = "model"
    labels: ClassVar[bool] = False

    @property
    def judges(self) -> bool:
        """Whether this recipe has a metric, i.e. can run the accuracy gate on held-out data."""
        return self.budget is not None

    def resolve(self, config: Int8Config) -> Int8Config:
        """``config`` with the recipe's defaults where it leaves options unset (gate defaults only with a holdout)."""
        defaults = dict(self.defaults)
        if config.gated and self.budget is not None:
            defaults.setdefault("max_drop", self.budget)
        if not config.gated:
            defaults = {k: v for k, v in defaults.items() if k not in GATE_ONLY}
        return config.filled(**defaults)

    def check(self, config: Int8Config) -> None:
        """Every cheap check of ``config`` for this family, files included; raises before any work."""
        config.check(self.data)
        name = self.family
        if config.gated and not self.judges:
            raise CalibrationError(f"no held-out metric for family {name!r} yet, so --holdout cannot gate it; quantize "
                                   "without --holdout, or call the recipe with your own metric (vkt.models.generic)")
        if config.holdout_labels and not self.labels:
            raise InputError(f"--holdout-labels bounds the drop vs ICDAR text labels; family {name!r} has none")
        if config.calib_steps is not None and self.data != "prompts":
            raise InputError(f"--calib-steps is for families calibrated on prompts (sd); family {name!r} uses images")
        if config.shapes is not None and self.data != "images":
            raise InputError(f"--shape is for families calibrated on images; family {name!r} uses prompts")

    def quantize(self, bundle: Any, config: Int8Config, *, extra_candidates: Sequence[CandidateFactory] = (),
                 component: str | None = None, show_progress: bool = True) -> dict[str, Any]:
        """Calibrate ``bundle`` as ``config`` says (unset options: the recipe's) and, with a holdout, gate it.

        ``extra_candidates``: factories of further gate candidates (e.g. QAT from vkt.training.qat), called with
        (bundle, calibration image paths, preprocess, resolved config). Returns the manifest's calibration section.
        """
        raise NotImplementedError


class ImageRecipe(Recipe):
    """A family calibrated on images: the manifest's pre-processing, a held-out split, its metric and ranking."""

    data: ClassVar[str] = "images"

    def metric(self, bundle: Any, held: Sequence[Any], config: Int8Config, show_progress: bool = True) -> Metric:
        """The family's gate metric on the held-out images (FP32's outputs computed once)."""
        raise CalibrationError(f"no held-out metric for family {self.family!r}")

    def ranking(self, graph: Any, config: Int8Config) -> tuple[list[dict[str, Any]], list[int]] | None:
        """(ranking rows, steps) the gate walks for this family, or None: ranked by ``config.ranking``."""
        return None

    def gate_configs(self, config: Int8Config, steps: Sequence[int] | None = None) -> list[GateConfig]:
        """The gate's settings from a resolved config, one per gate run: the ort placement is measured (trt when it is
        the only onnxruntime/TensorRT target, scored on onnxruntime CPU all the same) and trt rewritten with the same
        float nodes; the openvino placement has a gate of its own, scored and timed on OpenVINO."""
        from dataclasses import replace

        from vkt.calibration.config import DEFAULT_TARGETS

        targets = config.targets or DEFAULT_TARGETS
        ort_trt = [t for t in targets if t != "openvino"]
        placement = "ort" if "ort" in ort_trt else "trt"
        base = GateConfig(max_drop=config.max_drop / 100.0, steps=config.steps or (tuple(steps) if steps else None),
                          ranking=config.ranking or "tensor", placement=placement,
                          follow=tuple(t for t in ort_trt if t != placement), on_fail=config.on_fail,
                          ort_ops=config.ort_ops or "all", threads=config.threads,
                          min_speedup=DEFAULT_MIN_SPEEDUP if config.min_speedup is None else float(config.min_speedup))
        runs = [base] if ort_trt else []
        if "openvino" in targets:  # its float precision: calibration's (vkt.calibration.images.gate_images)
            runs.append(replace(base, placement="openvino", follow=()))
        return runs

    def quantize(self, bundle: Any, config: Int8Config, *, extra_candidates: Sequence[CandidateFactory] = (),
                 component: str | None = None, show_progress: bool = True) -> dict[str, Any]:
        from vkt.bundle import Bundle
        from vkt.calibration.holdout import resolve_holdout
        from vkt.calibration.images import calibrate_images, gate_images, image_preprocess

        # 1. Defaults and checks, before any work
        b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        comp = component or self.component
        cfg = self.resolve(config)
        self.check(cfg)
        # 2. Held-out images: a folder given, every 4th calibration image ("auto"), or none (no gate)
        split = resolve_holdout(cfg.calib, cfg.holdout, cfg.num_images)
        # 3. Ranges once, a Q/DQ graph per target
        cal = calibrate_images(b, split, cfg, component=comp, show_progress=show_progress)
        if not split.held:
            return cal.section
        # 4. The family's metric (FP32 once); held-out images drawn by "auto" may be too few to judge: then ungated
        try:
            metric = self.metric(b, list(split.held), cfg, show_progress)
        except CalibrationError as e:
            if split.how != "auto":
                raise
            log.warning("INT8 graphs ship without the accuracy gate: %s", e)
            return cal.section
        # 5. The gate: the family's ranking, further candidates, the choice shipped to every target
        ranking, steps = self.ranking(cal.graph, cfg) or (None, None)
        pre = image_preprocess(b, comp)
        candidates = [make(b, list(split.calib), pre, cfg) for make in extra_candidates]
        section = cal.section
        for gate in self.gate_configs(cfg, steps):
            section = gate_images(b, cal, metric, split, gate, ranking=ranking, candidates=candidates, component=comp,
                                  show_progress=show_progress)
        return section
