"""PP-OCR-class DB text detector: weight import (loader), DB targets (labels, numpy only), DB loss, ONNX export.

loader and labels load without torch (loader imports it when called); loss and export import torch.
"""
