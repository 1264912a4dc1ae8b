"""FinCompress stage: data."""
