"""Held-out images for the accuracy gate: a folder given, or every 4th calibration image ("auto"); listing and reading."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import CalibrationError
from vkt.log import get_logger

log = get_logger(__name__)

AUTO = "auto"          # --holdout auto: held-out images drawn from the calibration folder
AUTO_EVERY = 4         # every 4th calibration image (sorted) is held out ...
AUTO_MIN_IMAGES = 8    # ... when the folder holds at least this many, else none is and the gate does not run


@dataclass(frozen=True)
class HoldoutSplit:
    """The calibration and held-out images of one INT8 run. ``held`` empty: no accuracy gate.

    how: "given" (a held-out folder), "auto" (every 4th calibration image, left out of calibration) or "none".
    """

    calib: tuple[Path, ...]
    held: tuple[Path, ...]
    how: str
    folder: Path | None = None  # where the held-out images are

    def record(self) -> dict[str, Any]:
        """What the manifest's gate section records about the held-out images."""
        split = {"given": "given", "auto": f"every {AUTO_EVERY}th calibration image"}.get(self.how, self.how)
        return {"path": str(self.folder), "images": len(self.held), "split": split}


def holdout_images(folder: str | os.PathLike, min_images: int = 1) -> list[Path]:
    """Image paths in ``folder`` (sorted, not recursive); CalibrationError when missing or with too few images."""
    from vkt.calibration.data import IMAGE_EXTENSIONS, folder_files, is_image_file

    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"holdout folder not found or not a folder: {str(root)!r}")
    paths = [p for p in folder_files(root) if is_image_file(p)]
    if len(paths) < min_images:
        raise CalibrationError(f"holdout folder {str(root)!r} holds {len(paths)} image(s); the accuracy gate needs at least "
                               f"{min_images} held-out image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}) not used for calibration")
    return paths


def split_holdout(folder: str | os.PathLike, every: int = AUTO_EVERY,
                  min_images: int = AUTO_MIN_IMAGES) -> tuple[list[Path], list[Path]] | None:
    """(calibration, held-out) image paths of ``folder``: every ``every``-th image (sorted) held out.

    None when the folder has fewer than ``min_images`` images (too few to spare any).
    """
    from vkt.calibration.data import calibration_images

    paths = calibration_images(folder)
    if len(paths) < min_images:
        return None
    held = paths[every - 1::every]
    return [p for p in paths if p not in held], held


def resolve_holdout(calib: str | os.PathLike, holdout: str | os.PathLike | None,
                    num_images: int | None = None) -> HoldoutSplit:
    """The images of one run: ``holdout`` a folder, ``"auto"`` or None; at most ``num_images`` calibration images.

    With "auto" and fewer than 8 calibration images none is held out, and a warning says the gate will not run.
    """
    from vkt.calibration.data import calibration_images

    if holdout is None:
        return HoldoutSplit(tuple(calibration_images(calib, num_images)), (), "none")
    if str(holdout) != AUTO:
        return HoldoutSplit(tuple(calibration_images(calib, num_images)), tuple(holdout_images(holdout)), "given",
                            Path(holdout))
    split = split_holdout(calib)
    if split is None:
        log.warning("calibration folder %s has fewer than %d images: none held out, so the INT8 graphs ship without "
                    "the accuracy gate (pass --holdout DIR to gate them)", calib, AUTO_MIN_IMAGES)
        return HoldoutSplit(tuple(calibration_images(calib, num_images)), (), "none")
    return HoldoutSplit(tuple(split[0][:num_images]), tuple(split[1]), "auto", Path(calib))


def load_holdout_images(images: Sequence[Any], who: str) -> list[np.ndarray]:
    """Held-out images (paths or arrays) as BGR uint8 arrays; CalibrationError naming an unreadable one, or none."""
    from vkt.runtime.image import load_image

    imgs = []
    for i, im in enumerate(images):
        try:
            imgs.append(load_image(im, i))
        except Exception as e:
            raise CalibrationError(f"held-out image {str(im)[:200]!r} cannot be read: {str(e).splitlines()[0][:200]}") from None
    if not imgs:
        raise CalibrationError(f"{who} needs at least one held-out image, got none")
    return imgs
