"""INT8 for an imported ONNX model of no known family: calibrated on images, ungated unless the caller brings a metric.

    GenericRecipe().quantize(bundle, Int8Config(calib=Path("calib")))                 # no metric: no gate
    GenericRecipe(my_metric).quantize(bundle, Int8Config(calib=..., holdout=...))    # metric(bundle, held, config)

Exported as: vkt.export.onnx_import (`vkt export onnx`). Post-processing: none (the runtime returns the outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from vkt.calibration.config import Int8Config
from vkt.calibration.gate import Metric
from vkt.errors import CalibrationError
from vkt.models.recipe import ImageRecipe

# metric_factory(bundle, held-out image paths, config) -> metric(runner_factory) -> float, higher is better
MetricFactory = Callable[[Any, Sequence[Any], Int8Config], Metric]


class GenericRecipe(ImageRecipe):
    """Images pre-processed as the manifest says; percentile ranges (99.999), nearest weights, every ORT op INT8.

    With a ``metric_factory`` the gate runs on held-out images (budget 1.0 point, tensor ranking); without one,
    ``--holdout`` is refused: there is nothing to judge by.
    """

    family: ClassVar[str] = "generic"
    defaults: ClassVar[dict[str, Any]] = {"method": "percentile", "percentile": 99.999, "weight_rounding": "nearest",
                                          "ort_ops": "all", "ranking": "tensor"}

    def __init__(self, metric_factory: MetricFactory | None = None):
        self.metric_factory = metric_factory

    @property
    def budget(self) -> float | None:  # type: ignore[override]
        return 1.0 if self.metric_factory is not None else None

    def metric(self, bundle: Any, held: Sequence[Any], config: Int8Config, show_progress: bool = True) -> Metric:
        if self.metric_factory is None:
            raise CalibrationError("no held-out metric for an imported ONNX model; pass GenericRecipe(metric_factory)")
        return self.metric_factory(bundle, held, config)
