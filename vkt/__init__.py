"""vkt: PyTorch -> ONNX -> INT8/FP16 -> TensorRT, served from a torch-free runtime."""

__version__ = "0.1.0"
