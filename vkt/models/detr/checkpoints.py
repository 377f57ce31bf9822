"""DETR weights into transformers' DetrForObjectDetection: Hugging Face folders and facebookresearch/detr ``.pth`` files.

Two on-disk layouts are read:

* **Hugging Face** (``facebook/detr-resnet-50``): ``config.json`` + ``model.safetensors``. The hub
  checkpoints were saved by transformers 4 with a timm ResNet backbone (``use_timm_backbone: true``)
  and keys such as ``model.backbone.conv_encoder.model.layer1.0.conv1.weight`` and
  ``...self_attn.out_proj.weight``. timm is not a dependency here, so the backbone is rebuilt as
  transformers' own ResNet (same arithmetic: stride on the 3x3 conv, frozen BN with eps 1e-5) and the
  timm names — which are torchvision's — are mapped onto it; transformers 5's renames
  (``out_proj -> o_proj``, ``fc1 -> mlp.fc1``) are applied too. transformers 5's ``save_pretrained``
  writes that legacy layout as well (with its own ResNet names under ``conv_encoder``), and loads.
* **facebookresearch/detr** ``.pth`` (``torch.load(weights_only=True)``; ``{"model": state_dict}``
  or a bare state dict): torchvision ResNet under ``backbone.0.body.``, ``nn.MultiheadAttention``
  with a packed ``in_proj_weight`` [3d, d] (rows q, k, v), ``linear1/2`` and ``norm1..3``.
  The architecture (ResNet depths/widths, d_model, layers, FFN width, queries, classes) is read from
  the tensor shapes; the attention head count is not stored, so it is an argument (DETR uses 8).

A class-count mismatch (``num_labels`` asked for differs from the checkpoint's) re-initialises the
classification head with a warning, for fine-tuning on another label set; any other missing,
unexpected or mis-shaped key raises ModelError listing them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vkt.errors import InputError, ModelError
from vkt.log import get_logger

log = get_logger(__name__)

CLASS_HEAD = ("class_labels_classifier.weight", "class_labels_classifier.bias")
_MAX_LISTED = 12
# torchvision ResNet depth -> (block type, blocks per stage)
RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
           "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


# ---- backbone -------------------------------------------------------------------------------------
def resnet_backbone_config(name: str = "resnet50") -> Any:
    """transformers ``ResNetConfig`` equal to torchvision's/timm's ``name``, exposing the last stage (C5)."""
    from transformers import ResNetConfig

    if name not in RESNETS:
        raise ModelError(f"unsupported DETR backbone {name!r}; expected one of {sorted(RESNETS)}")
    kind, depths = RESNETS[name]
    widths = [64, 128, 256, 512] if kind == "basic" else [256, 512, 1024, 2048]
    return ResNetConfig(embedding_size=64, hidden_sizes=widths, depths=list(depths), layer_type=kind,
                        out_features=["stage4"])


_TV_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)$")
_TV_DOWN = re.compile(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$")


def resnet_key(name: str) -> str | None:
    """torchvision/timm ResNet parameter name -> transformers ResNet name (``None``: not a ResNet weight).

    ``conv1``/``bn1`` -> ``embedder.embedder.convolution``/``normalization``;
    ``layer{s}.{b}.conv{k}``/``bn{k}`` -> ``encoder.stages.{s-1}.layers.{b}.layer.{k-1}.convolution``/``normalization``;
    ``layer{s}.{b}.downsample.0``/``.1`` -> ``encoder.stages.{s-1}.layers.{b}.shortcut.convolution``/``normalization``.
    """
    if name.startswith("conv1."):
        return "embedder.embedder.convolution." + name[6:]
    if name.startswith("bn1."):
        return "embedder.embedder.normalization." + name[4:]
    m = _TV_BLOCK.match(name)
    if m:
        s, b, kind, k, rest = m.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(s) - 1}.layers.{b}.layer.{int(k) - 1}.{part}.{rest}"
    m = _TV_DOWN.match(name)
    if m:
        s, b, i, rest = m.groups()
        return f"encoder.stages.{int(s) - 1}.layers.{b}.shortcut.{'convolution' if i == '0' else 'normalization'}.{rest}"
    return None


def _resnet_config_from_weights(sd: Mapping[str, Any], prefix: str) -> Any:
    """A ResNetConfig whose shapes fit the torchvision-named weights under ``prefix`` (e.g. ``backbone.0.body.``)."""
    from transformers import ResNetConfig

    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(re.escape(prefix) + r"layer(\d)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != [1, 2, 3, 4] or f"{prefix}conv1.weight" not in sd:
        raise ModelError(f"no torchvision ResNet found under {prefix!r}: expected conv1 and layer1..layer4, "
                         f"found stages {sorted(blocks)}")
    bottleneck = f"{prefix}layer1.0.conv3.weight" in sd
    last = "conv3" if bottleneck else "conv2"
    widths = [int(sd[f"{prefix}layer{s}.0.{last}.weight"].shape[0]) for s in (1, 2, 3, 4)]
    return ResNetConfig(embedding_size=int(sd[f"{prefix}conv1.weight"].shape[0]), hidden_sizes=widths,
                        depths=[len(blocks[s]) for s in (1, 2, 3, 4)], layer_type="bottleneck" if bottleneck else "basic",
                        out_features=["stage4"])


# ---- Hugging Face folders -----------------------------------------------------------------------
_TIMM_PREFIX = "model.backbone.conv_encoder.model."
_BACKBONE = "model.backbone.model."
_LEGACY = ((re.compile(r"\.out_proj\."), ".o_proj."), (re.compile(r"(layers\.\d+)\.fc([12])\."), r"\1.mlp.fc\2."))
_CONFIG_DROP = ("backbone", "use_timm_backbone", "use_pretrained_backbone", "backbone_kwargs", "dilation")


def hf_config(raw: Mapping[str, Any], where: str = "config.json") -> Any:
    """``DetrConfig`` from a config.json dict; a timm ResNet backbone becomes transformers' ResNet of the same depth."""
    from transformers import DetrConfig

    d = dict(raw)
    if d.get("model_type", "detr") != "detr":
        raise ModelError(f"{where}: model_type is {d.get('model_type')!r}; expected 'detr'")
    if d.get("dilation"):
        raise ModelError(f"{where}: dilated (DC5) backbones need timm; only plain ResNet backbones are supported")
    bb = d.get("backbone_config")
    if bb is None or (isinstance(bb, Mapping) and bb.get("model_type") == "timm_backbone"):
        name = d.get("backbone") or (bb or {}).get("backbone") or "resnet50"
        d["backbone_config"] = resnet_backbone_config(name).to_dict()
    elif not isinstance(bb, Mapping) or bb.get("model_type") != "resnet":
        raise ModelError(f"{where}: backbone_config must describe a ResNet, got {bb!r:.200}")
    for k in _CONFIG_DROP:
        d.pop(k, None)
    try:
        return DetrConfig.from_dict(d)
    except Exception as e:
        raise ModelError(f"{where}: not a valid DETR config ({type(e).__name__}: {e})") from None


def hf_key(key: str) -> str:
    """A key of a transformers-4 / timm-backbone DETR checkpoint -> its transformers 5 name (others unchanged)."""
    if key.startswith(_TIMM_PREFIX):
        # timm (= torchvision) names from the hub, or transformers' own ResNet names: transformers 5's
        # save_pretrained writes its ResNet under the legacy ``conv_encoder`` prefix too.
        rest = key[len(_TIMM_PREFIX):]
        return _BACKBONE + (resnet_key(rest) or rest)
    key = key.replace("model.backbone.conv_encoder.", "model.backbone.")
    for pattern, repl in _LEGACY:
        key = pattern.sub(repl, key)
    return key


def load_hf_checkpoint(folder: str | os.PathLike, num_labels: int | None = None, id2label: Mapping[int, str] | None = None) -> Any:
    """Load ``DetrForObjectDetection`` from a local folder holding ``config.json`` and ``model.safetensors``.

    Args:
        folder: the checkpoint folder (facebook/detr-resnet-50 layout, or one saved by transformers 5).
        num_labels: classes wanted; if it differs from the checkpoint's, the classification head is
            re-initialised (with a warning). None keeps the checkpoint's.
        id2label: label names for a re-initialised head (default ``LABEL_i``).
    Returns:
        The model in eval mode.
    Raises:
        ModelError naming the folder and what is missing, unexpected or mis-shaped.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(folder)
    if not root.is_dir():
        raise ModelError(f"DETR checkpoint folder not found: {str(root)!r}" + (" (it is a file)" if root.is_file() else ""))
    cfg_path, weights = root / "config.json", root / "model.safetensors"
    missing = [p.name for p in (cfg_path, weights) if not p.is_file()]
    if missing:
        have = sorted(p.name for p in root.iterdir())[:_MAX_LISTED]
        raise ModelError(f"{str(root)!r} is not a Hugging Face DETR checkpoint: it lacks {missing} "
                         f"(expected config.json + model.safetensors; found {have})")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{str(cfg_path)!r} is not valid JSON ({e})") from None
    config = hf_config(raw, str(cfg_path))
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{str(weights)!r} is not a readable safetensors file ({e})") from None
    sd = {hf_key(k): v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    return _build(config, sd, str(weights), num_labels, id2label)


# ---- facebookresearch/detr .pth ------------------------------------------------------------------
_ORIG_BACKBONE = "backbone.0.body."


def original_key_map(sd: Mapping[str, Any]) -> dict[str, str]:
    """facebookresearch/detr key -> transformers key, for every key but the packed attention projections.

    (``in_proj_weight`` / ``in_proj_bias`` are split into q/k/v by :func:`convert_original_state_dict`.)
    """
    out: dict[str, str] = {}
    layer = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
    # norm{i} of the reference layers -> transformers' names; the decoder has a cross-attention norm in between.
    norms = {"encoder": {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"},
             "decoder": {"norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}}
    for k in sd:
        if k.endswith("num_batches_tracked") or "in_proj_" in k:
            continue
        if k.startswith(_ORIG_BACKBONE):
            mapped = resnet_key(k[len(_ORIG_BACKBONE):])
            out[k] = _BACKBONE + mapped if mapped else k
            continue
        m = layer.match(k)
        if m:
            part, i, rest = m.groups()
            head, _, leaf = rest.partition(".")
            if head in ("self_attn", "multihead_attn"):
                attn = "self_attn" if head == "self_attn" else "encoder_attn"
                rest = f"{attn}.{leaf.replace('out_proj', 'o_proj')}"
            elif head in ("linear1", "linear2"):
                rest = f"mlp.fc{head[-1]}.{leaf}"
            elif head in norms[part]:
                rest = f"{norms[part][head]}.{leaf}"
            out[k] = f"model.{part}.layers.{i}.{rest}"
            continue
        fixed = {"input_proj.": "model.input_projection.", "query_embed.": "model.query_position_embeddings.",
                 "transformer.decoder.norm.": "model.decoder.layernorm.", "class_embed.": "class_labels_classifier.",
                 "bbox_embed.": "bbox_predictor.", "backbone.1.row_embed.": "model.position_embedding.row_embeddings.",
                 "backbone.1.col_embed.": "model.position_embedding.column_embeddings."}
        for src, dst in fixed.items():
            if k.startswith(src):
                out[k] = dst + k[len(src):]
                break
        else:
            out[k] = k  # unknown: reported as unexpected by the loader
    return out


def convert_original_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """facebookresearch/detr state dict -> transformers DetrForObjectDetection state dict (tensors shared, not copied)."""
    out: dict[str, Any] = {}
    for src, dst in original_key_map(sd).items():
        out[dst] = sd[src]
    packed = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|multihead_attn)\.in_proj_(weight|bias)$")
    for k, v in sd.items():
        m = packed.match(k)
        if not m:
            continue
        part, i, head, kind = m.groups()
        d = v.shape[0] // 3
        if v.shape[0] != 3 * d:
            raise ModelError(f"{k}: packed q/k/v projection must have 3 * d_model rows, got shape {tuple(v.shape)}")
        attn = "self_attn" if head == "self_attn" else "encoder_attn"
        # nn.MultiheadAttention packs rows as [q; k; v].
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"model.{part}.layers.{i}.{attn}.{proj}.{kind}"] = v[j * d:(j + 1) * d]
    return out


def original_config(sd: Mapping[str, Any], num_heads: int = 8, id2label: Mapping[int, str] | None = None) -> Any:
    """DetrConfig read from the shapes of a facebookresearch/detr state dict (``num_heads`` is not stored)."""
    from transformers import DetrConfig

    need = ("input_proj.weight", "query_embed.weight", "class_embed.weight")
    lacking = [k for k in need if k not in sd]
    if lacking:
        raise ModelError(f"not a facebookresearch/detr state dict: it lacks {lacking} (has e.g. {sorted(sd)[:5]})")

    def count(part: str) -> int:
        return len({m.group(1) for k in sd if (m := re.match(rf"transformer\.{part}\.layers\.(\d+)\.", k))})

    d_model = int(sd["input_proj.weight"].shape[0])
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or d_model % num_heads:
        raise InputError(f"num_heads must be a positive integer dividing d_model {d_model}, got {num_heads!r}")
    enc, dec = count("encoder"), count("decoder")
    if not dec:
        raise ModelError("not a facebookresearch/detr state dict: no transformer.decoder.layers.* keys")
    ffn = int(sd["transformer.decoder.layers.0.linear1.weight"].shape[0])
    enc_ffn = int(sd["transformer.encoder.layers.0.linear1.weight"].shape[0]) if enc else ffn
    num_labels = int(sd["class_embed.weight"].shape[0]) - 1
    kwargs: dict[str, Any] = {}
    if id2label is not None:
        kwargs["id2label"] = {int(k): str(v) for k, v in id2label.items()}
    return DetrConfig(
        use_timm_backbone=False, backbone_config=_resnet_config_from_weights(sd, _ORIG_BACKBONE),
        d_model=d_model, encoder_layers=enc, decoder_layers=dec, encoder_ffn_dim=enc_ffn, decoder_ffn_dim=ffn,
        encoder_attention_heads=num_heads, decoder_attention_heads=num_heads, num_queries=int(sd["query_embed.weight"].shape[0]),
        position_embedding_type="learned" if "backbone.1.row_embed.weight" in sd else "sine",
        num_labels=num_labels, **kwargs)


def load_original_checkpoint(path: str | os.PathLike, num_labels: int | None = None, num_heads: int = 8,
                             id2label: Mapping[int, str] | None = None) -> Any:
    """Load a facebookresearch/detr ``.pth`` (e.g. ``detr-r50-e632da11.pth``) into ``DetrForObjectDetection``.

    Args:
        path: the ``.pth`` file; read with ``torch.load(weights_only=True)``.
        num_labels: classes wanted (None: the checkpoint's, 91 for the COCO models); a different
            number re-initialises the classification head with a warning.
        num_heads: attention heads (not recorded in the file; 8 in every released DETR).
        id2label: label names (default ``LABEL_i``).
    Returns:
        The model in eval mode.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"DETR checkpoint not found: {str(p)!r}" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"{str(p)!r} is not a loadable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{str(p)!r}: expected a state dict or {{'model': state dict}} of tensors, got {type(obj).__name__}")
    config = original_config(sd, num_heads, id2label)
    return _build(config, convert_original_state_dict(sd), str(p), num_labels, id2label)


# ---- shared --------------------------------------------------------------------------------------
def _build(config: Any, sd: dict[str, Any], where: str, num_labels: int | None, id2label: Mapping[int, str] | None) -> Any:
    """Make the model for ``config`` and load ``sd`` strictly, except for a deliberate class-count change."""
    from transformers import DetrForObjectDetection

    have = int(config.num_labels)
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise InputError(f"num_labels must be a positive integer, got {num_labels!r}")
        if num_labels != have:
            msg = (f"{where}: the checkpoint has {have} classes, {num_labels} were asked for: "
                   "the classification head is re-initialised (train it before use)")
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
            for k in CLASS_HEAD:
                sd.pop(k, None)
            config.num_labels = num_labels
            config.id2label = {int(k): str(v) for k, v in (id2label or {i: f"LABEL_{i}" for i in range(num_labels)}).items()}
            config.label2id = {v: k for k, v in config.id2label.items()}
    elif id2label is not None:
        config.id2label = {int(k): str(v) for k, v in id2label.items()}
    if config.num_labels != len(config.id2label):
        raise InputError(f"id2label has {len(config.id2label)} names but the model has {config.num_labels} classes")
    model = DetrForObjectDetection(config)
    expected = model.state_dict()
    reinit = set(CLASS_HEAD) if num_labels is not None and num_labels != have else set()
    missing = sorted(k for k in expected if k not in sd and k not in reinit)
    unexpected = sorted(k for k in sd if k not in expected)
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {items[:_MAX_LISTED]}{more}")
        raise ModelError(f"{where} does not fit DetrForObjectDetection ({'; '.join(parts)})")
    model.load_state_dict(sd, strict=not reinit)
    return model.eval()


def load_checkpoint(path: str | os.PathLike, num_labels: int | None = None, num_heads: int = 8,
                    id2label: Mapping[int, str] | None = None) -> Any:
    """A folder is read as a Hugging Face checkpoint, a file as a facebookresearch/detr ``.pth`` (see above)."""
    p = Path(path)
    if p.is_dir():
        return load_hf_checkpoint(p, num_labels=num_labels, id2label=id2label)
    if p.is_file():
        return load_original_checkpoint(p, num_labels=num_labels, num_heads=num_heads, id2label=id2label)
    raise ModelError(f"DETR checkpoint not found: {str(p)!r}; expected a Hugging Face folder "
                     "(config.json + model.safetensors) or a facebookresearch/detr .pth file")
