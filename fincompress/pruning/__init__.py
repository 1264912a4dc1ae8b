"""FinCompress stage: pruning."""
