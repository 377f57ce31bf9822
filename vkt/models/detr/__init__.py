"""DETR (transformers' DetrForObjectDetection): checkpoint loaders/converters and ONNX export (torch imported lazily)."""

from __future__ import annotations

from typing import Any


def tiny_detr(num_labels: int = 5, num_queries: int = 10, seed: int = 0, head_std: float = 1.0,
              position_embedding_type: str = "sine") -> Any:
    """A random DETR small enough for tests and smoke runs (basic-block ResNet 8-32 channels, d_model 32,
    2 + 2 layers, 4 heads), in eval mode.

    Weights are re-drawn fan-in scaled (``head_std`` times that for the class/box heads): transformers'
    init (std 0.02) makes every query of a model this small predict the same box with a near-uniform
    softmax, and parity tests need distinct detections rather than near-ties.
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=32, encoder_layers=2,
                        decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                        decoder_attention_heads=4, num_queries=num_queries, num_labels=num_labels,
                        position_embedding_type=position_embedding_type)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        # Fan-in scaled weights everywhere in the transformer, peakier attention (q/k x 2) and wider
        # heads: with transformers' std-0.02 init every query of a model this small gives the same box.
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and not name.startswith("model.backbone"):
                gain = 2.0 if name.endswith(("q_proj", "k_proj")) else 1.0
                gain = head_std if name.startswith(("class_labels", "bbox_predictor")) else gain
                mod.weight.normal_(0.0, gain / mod.weight.shape[1] ** 0.5)
                mod.bias.normal_(0.0, 0.1 * gain)
        # Distinct object queries (the reference init can leave them nearly equal at this size).
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
        # Random BN statistics, so that a key mix-up in the backbone shows in the outputs.
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
    return model


def reduced_detr(num_labels: int = 3, num_queries: int = 10, seed: int = 0, stride: int = 16) -> Any:
    """The reduced DETR that learns the synthetic shapes set on CPU in minutes (``vkt train detr --synth``).

    Basic-block ResNet, one block per stage: ``stride`` 16 (default) is three stages of 32-64-128 channels,
    32 the older four stages of 16-128; then d_model 64, 2 + 2 layers, 4 heads, FFN 128, ``num_queries``
    queries, auxiliary decoding losses on, no dropout; fan-in scaled transformer weights. Stride 16 gives
    the transformer 80 tokens on a 128 x 160 image instead of 20: at stride 32 the same recipe reached
    AP50 0.10 (96 x 128 images, 576 steps), at 16 it passed AP50 0.9 (see vkt.training.detr_run).
    The whole backbone trains: transformers freezes every parameter of its non-timm ResNet backbone
    (it looks for ``stage.1`` in names that read ``stages.1``), which only makes sense for pretrained weights.
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    if stride not in (16, 32):
        from vkt.errors import InputError

        raise InputError(f"stride must be 16 or 32, got {stride!r}")
    torch.manual_seed(seed)
    if stride == 16:
        backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
                                out_features=["stage3"])
    else:
        backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                                out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
                        num_queries=num_queries, num_labels=num_labels, auxiliary_loss=True, dropout=0.0)
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        # transformers' std-0.02 init makes every query of a model this small decode the same box, and
        # Hungarian matching then never breaks the tie (measured: the loss stayed flat for 200 steps with
        # ~9 of 10 queries claiming an object). Fan-in scaled weights and distinct queries, as tiny_detr.
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and not name.startswith("model.backbone"):
                mod.weight.normal_(0.0, 1.0 / mod.weight.shape[1] ** 0.5)
                mod.bias.zero_()
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
    for p in model.model.backbone.parameters():
        p.requires_grad_(True)
    return model.eval()
