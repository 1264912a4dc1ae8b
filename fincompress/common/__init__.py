"""The small shared library every stage builds on (paths, data, variants, metrics, training).

Stages never import each other; they meet through files and through this package.
"""

from fincompress.common.paths import (
    ID2LABEL,
    LABEL2ID,
    LABELS,
    FinCompressError,
    add_root_argument,
    checkpoints_dir,
    data_dir,
    logs_dir,
    project_root,
    results_dir,
    variant_dir,
)

__all__ = [
    "ID2LABEL", "LABEL2ID", "LABELS", "FinCompressError", "add_root_argument", "checkpoints_dir",
    "data_dir", "logs_dir", "project_root", "results_dir", "variant_dir",
]
