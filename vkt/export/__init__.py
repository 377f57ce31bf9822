"""torch -> ONNX export, export-friendly wrappers, graph cleanup and parity checks (torch imported lazily)."""
