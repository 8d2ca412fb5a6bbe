"""Building a TFDS dataset once per data directory, from one source only.

A builder records the file(s) it was built from in its metadata; asking a directory for a dataset
built from other files is an error, not a silent reuse of the old data.
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds


def prepare_once(builder: tfds.core.DatasetBuilder, source_key: str, source: Any, what: str) -> bool:
    """Build unless `builder.data_dir` holds a `what` built from `source` (its metadata
    `source_key`); True if it was built now."""
    if not builder.is_prepared():
        builder.download_and_prepare()
        return True
    built_from = builder.info.metadata.get(source_key)
    if built_from != source:
        raise ValueError(f"{builder.data_dir} already holds {what} built from {built_from}, not {source}; "
                         "use another directory")
    return False
