"""FinCompress stage: evaluation."""
