"""FinCompress stage: quantization."""
