"""DETR checkpoints: facebookresearch/detr .pth conversion round trip, Hugging Face folders, clear errors."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from vkt.errors import InputError, ModelError  # noqa: E402
from vkt.models.detr import tiny_detr  # noqa: E402
from vkt.models.detr.checkpoints import (  # noqa: E402
    hf_key,
    load_hf_checkpoint,
    load_original_checkpoint,
    resnet_backbone_config,
)


# ---- the reference layouts, spelled out independently of vkt's mapping ------------------------------
def hf_resnet_to_torchvision(k: str) -> str:
    """transformers ResNet key -> torchvision/timm key (the inverse of what the loaders do)."""
    k = k.replace("embedder.embedder.convolution.", "conv1.").replace("embedder.embedder.normalization.", "bn1.")
    m = re.match(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(layer|shortcut)\.(\d)?\.?(convolution|normalization)\.(.+)", k)
    if not m:
        return k
    s, b, kind, i, part, leaf = m.groups()
    if kind == "shortcut":
        return f"layer{int(s) + 1}.{b}.downsample.{0 if part == 'convolution' else 1}.{leaf}"
    return f"layer{int(s) + 1}.{b}.{'conv' if part == 'convolution' else 'bn'}{int(i) + 1}.{leaf}"


def to_original(sd: dict) -> dict:
    """transformers DETR state dict -> facebookresearch/detr's (packed nn.MultiheadAttention, linear1/2, norm1..3)."""
    out: dict = {}
    for k, v in sd.items():
        if k.startswith("model.backbone.model."):
            out["backbone.0.body." + hf_resnet_to_torchvision(k[len("model.backbone.model."):])] = v
            continue
        m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)", k)
        if m:
            part, i, rest = m.groups()
            pre = f"transformer.{part}.layers.{i}."
            attn = re.match(r"(self_attn|encoder_attn)\.(q|k|v|o)_proj\.(weight|bias)", rest)
            if attn:
                head = "self_attn" if attn.group(1) == "self_attn" else "multihead_attn"
                if attn.group(2) == "o":
                    out[f"{pre}{head}.out_proj.{attn.group(3)}"] = v
                continue   # q/k/v are packed below
            norms = {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2" if part == "encoder" else "norm3",
                     "encoder_attn_layer_norm": "norm2"}
            name, leaf = rest.rsplit(".", 1)
            name = {"mlp.fc1": "linear1", "mlp.fc2": "linear2"}.get(name, norms.get(name, name))
            out[f"{pre}{name}.{leaf}"] = v
            continue
        for a, b in (("model.input_projection.", "input_proj."), ("model.query_position_embeddings.", "query_embed."),
                     ("model.decoder.layernorm.", "transformer.decoder.norm."), ("class_labels_classifier.", "class_embed."),
                     ("bbox_predictor.", "bbox_embed."), ("model.position_embedding.row_embeddings.", "backbone.1.row_embed."),
                     ("model.position_embedding.column_embeddings.", "backbone.1.col_embed.")):
            if k.startswith(a):
                out[b + k[len(a):]] = v
                break
        else:
            raise AssertionError(f"unmapped key {k}")
    for k in sd:
        m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.q_proj\.(weight|bias)", k)
        if m:
            part, i, attn, kind = m.groups()
            head = "self_attn" if attn == "self_attn" else "multihead_attn"
            base = k.rsplit(".q_proj.", 1)[0]
            out[f"transformer.{part}.layers.{i}.{head}.in_proj_{kind}"] = torch.cat(
                [sd[f"{base}.{p}_proj.{kind}"] for p in "qkv"])
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_detr(num_labels=5, num_queries=10)


@pytest.fixture(scope="module")
def pth(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "detr-tiny.pth"
    torch.save({"model": to_original(model.state_dict()), "epoch": 1}, path)
    return path


def same_outputs(a, b, shape=(1, 3, 128, 160)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        oa, ob = a(x), b(x)
    return float((oa.logits - ob.logits).abs().max()), float((oa.pred_boxes - ob.pred_boxes).abs().max())


# ---- .pth ---------------------------------------------------------------------------------------------
def test_pth_round_trip(model, pth):
    loaded = load_original_checkpoint(pth, num_heads=4)
    assert loaded.config.num_labels == 5 and loaded.config.num_queries == 10 and loaded.config.d_model == 32
    assert loaded.config.backbone_config.depths == [1, 1, 1, 1] and loaded.config.backbone_config.layer_type == "basic"
    want = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert same_outputs(model, loaded) == (0.0, 0.0)


def test_packed_projection_split_matches_torch_multihead_attention(model):
    """The q/k/v split must mean what nn.MultiheadAttention means by in_proj (not only invert our own packing)."""
    orig = to_original(model.state_dict())
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    mha.load_state_dict({"in_proj_weight": orig["transformer.decoder.layers.1.multihead_attn.in_proj_weight"],
                         "in_proj_bias": orig["transformer.decoder.layers.1.multihead_attn.in_proj_bias"],
                         "out_proj.weight": orig["transformer.decoder.layers.1.multihead_attn.out_proj.weight"],
                         "out_proj.bias": orig["transformer.decoder.layers.1.multihead_attn.out_proj.bias"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_original_checkpoint_from_dict(orig)
    attn = loaded.model.decoder.layers[1].encoder_attn
    q, kv = torch.randn(2, 10, 32), torch.randn(2, 37, 32)
    with torch.no_grad():
        want = mha(q, kv, kv, need_weights=False)[0]
        got = attn(q, kv)[0]
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def load_original_checkpoint_from_dict(sd):
    from vkt.models.detr.checkpoints import _build, convert_original_state_dict, original_config

    return _build(original_config(sd, num_heads=4), convert_original_state_dict(sd), "<dict>", None, None)


def test_bare_state_dict_and_learned_positions(tmp_path):
    m = tiny_detr(position_embedding_type="learned")
    path = tmp_path / "bare.pth"
    torch.save(to_original(m.state_dict()), path)
    loaded = load_original_checkpoint(path, num_heads=4)
    assert loaded.config.position_embedding_type == "learned"
    assert same_outputs(m, loaded) == (0.0, 0.0)


def test_class_count_mismatch_reinitialises_the_head_with_a_warning(model, pth):
    with pytest.warns(UserWarning, match="5 classes, 3 were asked for"):
        loaded = load_original_checkpoint(pth, num_labels=3, num_heads=4, id2label={0: "a", 1: "b", 2: "c"})
    assert loaded.class_labels_classifier.weight.shape == (4, 32)
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert torch.equal(loaded.bbox_predictor.layers[0].weight, model.bbox_predictor.layers[0].weight)


def test_pth_errors(pth, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_original_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="not a loadable PyTorch checkpoint"):
        load_original_checkpoint(junk)
    sd = torch.load(pth, weights_only=True)["model"]
    del sd["transformer.decoder.layers.0.linear2.weight"]
    sd["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(ModelError, match=r"1 missing keys: \['model.decoder.layers.0.mlp.fc2.weight'\].*1 unexpected keys: \['extra.weight'\]"):
        load_original_checkpoint(bad, num_heads=4)
    with pytest.raises(InputError, match="num_heads"):
        load_original_checkpoint(pth, num_heads=5)
    torch.save({"model": {"input_proj.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(ModelError, match="lacks"):
        load_original_checkpoint(bad)


# ---- Hugging Face folders -------------------------------------------------------------------------------
def hub_layout(model) -> dict:
    """The facebook/detr-resnet-* layout: timm backbone names under conv_encoder, out_proj, fc1/fc2."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.backbone.model."):
            k = "model.backbone.conv_encoder.model." + hf_resnet_to_torchvision(k[len("model.backbone.model."):])
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")
        out[k] = v.contiguous()
    return out


def test_hub_layout_with_timm_resnet18_backbone(tmp_path):
    from transformers import DetrConfig, DetrForObjectDetection

    torch.manual_seed(0)
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=resnet_backbone_config("resnet18"), d_model=32,
                     encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                     decoder_attention_heads=4, num_queries=5, num_labels=3)
    model = DetrForObjectDetection(cfg).eval()
    folder = tmp_path / "detr-resnet-18"
    folder.mkdir()
    safetensors_torch.save_file(hub_layout(model), str(folder / "model.safetensors"))
    # config.json as the hub has it (transformers 4): timm backbone by name, no backbone_config.
    raw = {k: v for k, v in cfg.to_dict().items() if k not in ("backbone_config",)}
    raw.update(backbone="resnet18", use_timm_backbone=True, use_pretrained_backbone=True, dilation=False,
               model_type="detr", transformers_version="4.26.0.dev0", max_position_embeddings=1024)
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = load_hf_checkpoint(folder)
    assert loaded.config.backbone_config.layer_type == "basic" and loaded.config.backbone_config.depths == [2, 2, 2, 2]
    assert same_outputs(model, loaded, (1, 3, 96, 128)) == (0.0, 0.0)


def test_transformers5_folder_loads_and_errors_list_keys(model, tmp_path):
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    assert same_outputs(model, load_hf_checkpoint(folder)) == (0.0, 0.0)
    sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
    del sd["bbox_predictor.layers.2.bias"]
    sd["model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    sd["surprise"] = torch.zeros(1)
    safetensors_torch.save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ModelError) as e:
        load_hf_checkpoint(folder)
    msg = str(e.value)
    assert "1 missing keys: ['bbox_predictor.layers.2.bias']" in msg and "1 unexpected keys: ['surprise']" in msg
    assert "model.encoder.layers.0.self_attn.q_proj.weight: checkpoint (3, 3) vs model (32, 32)" in msg


def test_hf_folder_errors(tmp_path, model):
    with pytest.raises(ModelError, match="not found"):
        load_hf_checkpoint(tmp_path / "nope")
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=r"lacks \['model.safetensors'\].*pytorch_model.bin"):
        load_hf_checkpoint(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="model_type is 'bert'"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_hf_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "detr", "dilation": True}))
    with pytest.raises(ModelError, match="DC5"):
        load_hf_checkpoint(folder)


def test_key_renames():
    assert hf_key("model.backbone.conv_encoder.model.layer2.1.downsample.1.running_var") == \
        "model.backbone.model.encoder.stages.1.layers.1.shortcut.normalization.running_var"
    assert hf_key("model.backbone.conv_encoder.model.bn1.weight") == "model.backbone.model.embedder.embedder.normalization.weight"
    assert hf_key("model.decoder.layers.3.encoder_attn.out_proj.bias") == "model.decoder.layers.3.encoder_attn.o_proj.bias"
    assert hf_key("model.encoder.layers.0.fc2.weight") == "model.encoder.layers.0.mlp.fc2.weight"
    assert hf_key("class_labels_classifier.bias") == "class_labels_classifier.bias"
    with pytest.raises(ModelError, match="resnet152"):
        resnet_backbone_config("resnet152")
