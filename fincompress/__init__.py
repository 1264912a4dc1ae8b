"""FinCompress: how far can FinBERT be compressed for CPU inference?"""

__version__ = "0.1.0"
