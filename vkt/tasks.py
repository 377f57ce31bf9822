"""Per-task defaults: family, shape profile, pre- and post-processing parameters written into manifests.

The dicts here are the manifest's ``preprocess`` / ``postprocess`` schema; a C++ service reproduces
pre/post-processing from them alone, so every key is documented in docs/ARCHITECTURE.md.

preprocess keys:
    input        graph input the image goes to
    color        channel order the model expects: "BGR" or "RGB"
    layout       "NCHW"
    resize       {"mode": "limit_side", "limit_type": "min"|"max", "limit_side_len": int, "round_to": int,
                  "max_side_len": int}  (PP-OCR style: scale so the min/max side hits limit_side_len,
                  then round each side half-to-even to a multiple of round_to; never above max_side_len
                  nor the model profile's max height/width: vkt.runtime.image.resized_size is the rule)
                 {"mode": "shortest_edge", "shortest_edge": int, "longest_edge": int} (DETR style)
    scale        multiply uint8 pixels by this first (1/255)
    mean, std    per-channel, applied after scale: (x * scale - mean) / std, in `color` order
postprocess (task "text-detection", type "db"): DB thresholds, see vkt.runtime.textdet.

Also the I/O names of the Stable Diffusion graphs, which the exporter writes and the pipeline feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vkt.errors import InputError


@dataclass(frozen=True)
class TaskDefaults:
    family: str
    task: str
    profile: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, TaskDefaults] = {
    "generic": TaskDefaults(family="generic", task="tensor"),
    # rapidocr-onnxruntime's detector defaults (DESIGN.md pins them): short side up to 736, mean=std=0.5.
    "textdet": TaskDefaults(
        family="textdet",
        task="text-detection",
        profile={"batch": (1, 1, 8), "height": (32, 736, 2048), "width": (32, 736, 2048)},
        preprocess={
            "color": "BGR", "layout": "NCHW",
            "resize": {"mode": "limit_side", "limit_type": "min", "limit_side_len": 736, "round_to": 32, "max_side_len": 2048},
            "scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        },
        postprocess={
            "type": "db", "thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6, "max_candidates": 1000,
            "min_size": 3, "min_side_px": 4, "use_dilation": True, "score_mode": "fast", "box_type": "quad",
        },
    ),
    "detr": TaskDefaults(
        family="detr",
        task="object-detection",
        profile={"batch": (1, 1, 4), "height": (320, 800, 1333), "width": (320, 1066, 1333)},
        preprocess={
            "color": "RGB", "layout": "NCHW",
            "resize": {"mode": "shortest_edge", "shortest_edge": 800, "longest_edge": 1333},
            "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        },
        postprocess={"type": "detr", "score_threshold": 0.5, "top_k": 100},
    ),
}

# Stable Diffusion graph I/O names: vkt.models.sd.export writes the text encoder, UNet and VAE decoder
# with them, vkt.runtime.txt2img feeds and reads them.
TEXT_IDS, TEXT_OUT = "input_ids", "last_hidden_state"
UNET_SAMPLE, UNET_TIMESTEP, UNET_TEXT, UNET_OUT = "sample", "timestep", "encoder_hidden_states", "noise_pred"
VAE_IN, VAE_OUT = "latents", "image"


def task_defaults(task: str) -> TaskDefaults:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]
