"""The study's offline assets (datasets and models), found or fetched once.

Layout of an assets folder (the same as `../shared` beside the repository):
  data/financial_phrasebank/   Financial PhraseBank v1.0 (release zip and/or its Sentences_*.txt)
  data/fiqa_2018/              FiQA-2018 task 1 train JSON (headlines, posts)
  models/all-MiniLM-L6-v2/     sentence-transformers/all-MiniLM-L6-v2 (the offline stand-in teacher)
  models/finbert-shape/        ProsusAI/finbert's config.json + tokenizer (no weights)

Search order: $FINCOMPRESS_ASSETS, ../shared beside the repository, ~/.cache/fincompress; when
none has an asset and the Hub is reachable, it is downloaded into the cache and its checksums verified.
"""

from __future__ import annotations

from pathlib import Path

from fincompress.common.paths import FinCompressError


class AssetsUnavailable(FinCompressError):
    """No local copy of an asset and no way to download it (the message says what to fetch, where)."""


def asset_file(relative: str, download: bool = True) -> Path:
    """The path of `relative` (e.g. "models/all-MiniLM-L6-v2") in the first assets folder that has it."""
    raise NotImplementedError
