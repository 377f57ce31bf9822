"""The VktError hierarchy: every error a user can cause names the value and what was expected."""

from __future__ import annotations


class VktError(Exception):
    """Base class for errors caused by user input or the environment (not by a bug in vkt).

    The CLI prints ``str(err)`` as one red line and exits with ``exit_code``; the server turns
    it into a 4xx JSON body.
    """

    exit_code = 2


class InputError(VktError, ValueError):
    """A tensor, image, path or option given by the user is not what was expected."""


class SpecError(InputError):
    """An ExportSpec / shape profile is inconsistent."""


class ShapeError(InputError):
    """A tensor's shape, rank or dtype does not fit the model's spec or profile."""


class BundleError(VktError):
    """A bundle or manifest is missing, malformed, tampered with or of an unknown version."""


class ModelError(VktError):
    """A model file (ONNX, plan, checkpoint) is missing, corrupt or cannot be parsed."""


class BackendError(VktError):
    """A backend was asked for that is unknown or cannot run on this machine."""


class BuildError(VktError):
    """The engine builder could not parse or build a network."""


class CalibrationError(VktError):
    """Calibration data or ranges are unusable."""


def expected(what: str, got: object) -> str:
    """Format the common 'expected X, got Y' fragment."""
    return f"expected {what}, got {got!r}"
