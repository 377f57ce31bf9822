"""What TextDetector and Detector share: the batch cap read from the spec and the max_batch check."""

import pytest

from vkt.errors import InputError
from vkt.runtime.pipeline import DEFAULT_BATCH_CAP, batch_cap, batch_limit
from vkt.specs import ExportSpec, Profile, TensorSpec


def spec(first, profiles=()):
    x = TensorSpec("x", "float32", (first, 3, "height", "width"))
    y = TensorSpec("y", "float32", (first, 1, "height", "width"))
    return ExportSpec((x,), (y,), tuple(profiles))


PROFILED = spec("batch", [Profile({"batch": (1, 2, 6), "height": (32, 64, 96), "width": (32, 64, 96)})])


def test_batch_cap_is_the_static_batch_else_the_profile_max_else_the_default():
    assert batch_cap(spec(3), "x") == 3
    assert batch_cap(PROFILED, "x") == 6
    assert batch_cap(spec("batch"), "x") == DEFAULT_BATCH_CAP == 8


def test_batch_limit_caps_what_is_asked_and_refuses_non_integers():
    assert batch_limit(PROFILED, "x", None) == 6
    assert batch_limit(PROFILED, "x", 4) == 4
    assert batch_limit(PROFILED, "x", 100) == 6
    assert batch_limit(spec(1), "x", 4) == 1
    for bad in (True, -1, 2.0, "2"):
        with pytest.raises(InputError, match=f"max_batch must be a positive integer, got {bad!r}"):
            batch_limit(PROFILED, "x", bad)
