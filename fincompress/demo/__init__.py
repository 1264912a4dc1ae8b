"""FinCompress stage: demo."""
