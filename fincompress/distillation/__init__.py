"""FinCompress stage: distillation."""
