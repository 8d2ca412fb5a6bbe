"""Corpus embeddings on disk as fixed-size row chunks, one `.npy` per chunk.

Encoding 21M passages takes hours, so the build writes each chunk atomically (temp file + rename)
and a restart skips the chunks already on disk. `meta.json` pins what the chunks were made with, so
a restart with a different encoder or corpus fails instead of mixing embeddings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_META = "meta.json"


class EmbeddingStore:
    """`num_rows` x `dim` float32 rows in chunks of `chunk_size` rows under `directory`."""

    def __init__(self, directory: str | Path, *, num_rows: int, dim: int, chunk_size: int,
                 fingerprint: dict[str, Any] | None = None) -> None:
        if num_rows < 1 or dim < 1 or chunk_size < 1:
            raise ValueError(f"num_rows, dim and chunk_size must be positive, got {num_rows}, {dim}, {chunk_size}")
        self.directory = Path(directory)
        self.num_rows, self.dim, self.chunk_size = num_rows, dim, chunk_size
        meta = {"num_rows": num_rows, "dim": dim, "chunk_size": chunk_size, "fingerprint": fingerprint or {}}
        meta = json.loads(json.dumps(meta))  # compare in JSON form (tuples -> lists)
        self.fingerprint: dict[str, Any] = meta["fingerprint"]
        path = self.directory / _META
        if path.exists():
            found = json.loads(path.read_text())
            if found != meta:
                raise ValueError(f"{self.directory} holds embeddings made with {found}, not {meta}; "
                                 "delete it or use another output directory")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, json.dumps(meta, indent=1).encode())

    @classmethod
    def open(cls, directory: str | Path) -> EmbeddingStore:
        meta = json.loads((Path(directory) / _META).read_text())
        return cls(directory, num_rows=meta["num_rows"], dim=meta["dim"], chunk_size=meta["chunk_size"],
                   fingerprint=meta["fingerprint"])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_size)

    def rows(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_rows))

    def path(self, chunk: int) -> Path:
        return self.directory / f"chunk_{chunk:06d}.npy"

    def pending(self) -> list[int]:
        """Chunks not on disk yet, in order."""
        return [c for c in range(self.num_chunks) if not self.path(c).exists()]

    def write(self, chunk: int, vectors: np.ndarray) -> None:
        expected = (len(self.rows(chunk)), self.dim)
        if vectors.shape != expected:
            raise ValueError(f"chunk {chunk} must be {expected}, got {vectors.shape}")
        tmp = self.path(chunk).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(vectors, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(chunk))

    def load(self) -> np.ndarray:
        """All rows as one [num_rows, dim] float32 array, filled chunk by chunk (one copy in memory)."""
        if missing := self.pending():
            raise FileNotFoundError(f"{self.directory}: {len(missing)} of {self.num_chunks} chunks missing "
                                    f"(first: {self.path(missing[0]).name}); finish the build first")
        out = np.empty((self.num_rows, self.dim), np.float32)  # [n, d]
        for chunk in range(self.num_chunks):
            rows = self.rows(chunk)
            out[rows.start:rows.stop] = np.load(self.path(chunk), mmap_mode="r")
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
