"""DreamboothConfig: the typed, validated run configuration, loaded from YAML (unknown keys rejected)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vkt.errors import InputError

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
TRACKERS = ("tensorboard", "wandb", "none")


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the UNet's attention projections (peft); merged into the weights on output."""

    rank: int = 4                  # r: adapter rank
    alpha: float = 4.0             # scaling alpha / r
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class DreamboothConfig:
    """One Dreambooth run (Ruiz et al. 2023): ``identifier`` + ``class_noun`` name the subject.

    Paths are resolved against the YAML file's folder. The defaults are the paper's recipe scaled
    for a few hundred steps: lr 5e-6 (full UNet) / 1e-4 (LoRA), prior weight 1.0, ~200 class images.
    """

    pretrained: str                          # base diffusers pipeline folder (text_encoder/ unet/ vae/ tokenizer/ scheduler/)
    instance_dir: str                        # 3-5 photos of the subject (png/jpg/webp)
    identifier: str                          # rare token naming the subject, e.g. "sks"
    class_noun: str                          # the subject's class, e.g. "dog"
    output_dir: str                          # run folder: config, checkpoints, logs, final model
    instance_prompt: str = "a photo of {identifier} {class_noun}"
    class_prompt: str = "a photo of {class_noun}"
    # class-prior preservation
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0           # lambda in  L = L_instance + lambda * L_prior
    class_dir: str | None = None             # default: <output_dir>/class_images
    num_class_images: int = 200
    class_steps: int = 25                    # denoising steps per generated class image
    class_guidance: float = 7.5
    class_seed: int = 0                      # image i is generated with seed class_seed + i
    # data
    resolution: int = 512                    # square training crop, pixels (multiple of 8)
    center_crop: bool = True
    random_flip: bool = False
    # optimisation
    max_steps: int = 400                     # optimizer steps
    batch_size: int = 1                      # instance images per step (as many class images join them)
    grad_accum: int = 1
    lr: float = 5e-6
    lr_scheduler: str = "constant"           # constant | constant_with_warmup | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    train_text_encoder: bool = False
    lora: LoraConfig | None = None           # set (even to {}) for LoRA on the UNet
    seed: int = 0
    # Lightning
    precision: str = "32-true"               # "32-true", "bf16-mixed", "16-mixed" (GPU), ...
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"                   # passed through, e.g. "ddp"
    num_threads: int | None = None           # torch CPU threads (None: torch's default)
    # checkpoints and tracking
    checkpoint_every: int = 100              # optimizer steps between full-state checkpoints
    keep_checkpoints: int = 2                # newest N kept
    trackers: tuple[str, ...] = ("tensorboard",)
    log_every: int = 1
    sample_every: int = 0                    # log sample images every N steps (0: never)
    sample_prompts: tuple[str, ...] = ("a photo of {identifier} {class_noun}",)
    sample_steps: int = 20
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for k in ("pretrained", "instance_dir", "identifier", "class_noun", "output_dir", "instance_prompt", "class_prompt"):
            v = getattr(self, k)
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"{k} must be a non-empty string, got {v!r}")
        if len(self.identifier.split()) != 1:
            raise InputError(f"identifier must be one word (a rare token such as 'sks'), got {self.identifier!r}")
        if self.identifier.lower() == self.class_noun.lower():
            raise InputError(f"identifier {self.identifier!r} must differ from class_noun {self.class_noun!r}")
        if "{identifier}" not in self.instance_prompt:
            raise InputError(f"instance_prompt must contain '{{identifier}}', got {self.instance_prompt!r}")
        _pos_ints(self, "num_class_images", "class_steps", "resolution", "max_steps", "batch_size", "grad_accum",
                  "checkpoint_every", "keep_checkpoints", "log_every", "sample_steps")
        _nonneg_ints(self, "class_seed", "warmup_steps", "seed", "sample_every")
        if self.resolution % 8:
            raise InputError(f"resolution must be a multiple of 8 (the VAE's cell), got {self.resolution}")
        _pos_floats(self, "lr", "adam_eps", "max_grad_norm")
        _nonneg_floats(self, "prior_loss_weight", "weight_decay", "class_guidance")
        for k in ("adam_beta1", "adam_beta2"):
            v = getattr(self, k)
            if not _is_num(v) or not 0 <= v < 1:
                raise InputError(f"{k} must be a number in [0, 1), got {v!r}")
        if self.lr_scheduler not in SCHEDULERS:
            raise InputError(f"lr_scheduler must be one of {list(SCHEDULERS)}, got {self.lr_scheduler!r}"
                             + _suggest(self.lr_scheduler, SCHEDULERS))
        for t in self.trackers:
            if t not in TRACKERS:
                raise InputError(f"trackers: unknown tracker {t!r}; expected some of {list(TRACKERS)}" + _suggest(t, TRACKERS))
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)
                                             or self.num_threads < 1):
            raise InputError(f"num_threads must be a positive integer or null, got {self.num_threads!r}")
        if not isinstance(self.precision, str) or not isinstance(self.strategy, str):
            raise InputError(f"precision and strategy must be strings, got {self.precision!r}, {self.strategy!r}")
        if self.lora is not None:
            _pos_ints(self.lora, "rank")
            _pos_floats(self.lora, "alpha")
            if not self.lora.targets or not all(isinstance(t, str) and t for t in self.lora.targets):
                raise InputError(f"lora.targets must be a non-empty list of module names, got {self.lora.targets!r}")

    # ---- derived ---------------------------------------------------------------------------------
    def prompt(self, template: str) -> str:
        return template.format(identifier=self.identifier, class_noun=self.class_noun)

    @property
    def instance_text(self) -> str:
        return self.prompt(self.instance_prompt)

    @property
    def class_text(self) -> str:
        return self.prompt(self.class_prompt)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    @property
    def class_images_dir(self) -> Path:
        return Path(self.class_dir) if self.class_dir else self.run_dir / "class_images"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists: YAML/JSON-plain


def from_dict(data: Any, base_dir: str | os.PathLike | None = None, where: str = "config") -> DreamboothConfig:
    """Build a DreamboothConfig from a plain mapping; unknown keys raise InputError naming the key
    (and the closest known one). Relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    _reject_unknown(data, DreamboothConfig, where)
    required = [f.name for f in fields(DreamboothConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{where}: missing required setting(s) {missing}")
    lora = data.get("lora")
    if lora is not None:
        if lora is True:
            lora = {}
        if not isinstance(lora, dict):
            raise InputError(f"{where}: lora must be a mapping (rank, alpha, targets) or true, got {lora!r}")
        _reject_unknown(lora, LoraConfig, f"{where}: lora")
        if "targets" in lora:
            lora["targets"] = _as_tuple(lora["targets"], "lora.targets")
        data["lora"] = LoraConfig(**lora)
    for k in ("trackers", "sample_prompts"):
        if k in data:
            data[k] = _as_tuple(data[k], k)
    if base_dir is not None:
        for k in ("pretrained", "instance_dir", "output_dir", "class_dir"):
            v = data.get(k)
            if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
                data[k] = str(Path(base_dir) / v)
            elif isinstance(v, str):
                data[k] = os.path.expanduser(v)
    try:
        return DreamboothConfig(**data)
    except TypeError as e:  # a wrong type that __post_init__ could not name
        raise InputError(f"{where}: {e}") from None


def load_config(path: str | os.PathLike) -> DreamboothConfig:
    """Read a YAML config file (relative paths resolve against its folder)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"config file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); expected a YAML "
                         "file") from None
    return from_dict(data, base_dir=p.parent.resolve(), where=str(p))


def save_resolved(config: DreamboothConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in, absolute paths) as YAML, atomically."""
    import yaml

    from vkt.fsutil import atomic_write_text

    atomic_write_text(path, "# resolved vkt dreambooth config (every setting, defaults included)\n"
                      + yaml.safe_dump(config.to_dict(), sort_keys=False))


# ---- validation helpers ------------------------------------------------------------------------------

def _reject_unknown(data: dict, cls: type, where: str) -> None:
    known = [f.name for f in fields(cls)]
    for k in data:
        if k not in known:
            raise InputError(f"{where}: unknown setting {k!r}" + _suggest(str(k), known)
                             + f"; known settings: {', '.join(known)}")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _as_tuple(v: Any, name: str) -> tuple:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)):
        return tuple(v)
    raise InputError(f"{name} must be a string or a list, got {v!r}")


def _is_num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _pos_ints(obj: Any, *names: str) -> None:
    for k in names:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{k} must be a positive integer, got {v!r}")


def _nonneg_ints(obj: Any, *names: str) -> None:
    for k in names:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"{k} must be an integer >= 0, got {v!r}")


def _pos_floats(obj: Any, *names: str) -> None:
    for k in names:
        v = getattr(obj, k)
        if not _is_num(v) or not v > 0:
            raise InputError(f"{k} must be a number > 0, got {v!r}")


def _nonneg_floats(obj: Any, *names: str) -> None:
    for k in names:
        v = getattr(obj, k)
        if not _is_num(v) or not v >= 0:
            raise InputError(f"{k} must be a number >= 0, got {v!r}")


__all__ = ["DreamboothConfig", "LoraConfig", "from_dict", "load_config", "save_resolved"]
