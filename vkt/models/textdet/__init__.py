"""PP-OCR-class DB text detector: weight import, DB labels and loss, ONNX export (torch imported lazily)."""
