"""The unknown faces' neighbour index of one embedding space, kept on disk between clustering runs.

A full clustering run under the link rule leaves behind the inverted file of the unknown pool it grouped
(`domain.neighbors.FaceIndex`) with the face id of every row; the next run asks it who the new faces'
neighbours are instead of reading and comparing every vector again (services/incremental_clustering.py
decides when that is safe). Two files per space under FACE_DATA_DIR/cluster_index:

- `<space>.<generation>.faiss`: the FAISS index in FAISS's own format (float16 codes: 1 KB per 512-d face),
  written and read by FAISS straight from the file (no second copy in memory: 1 GB at 1M faces);
- `<space>.meta.npz`: the rows' face ids, the ids of every face the run had seen (8 bytes a face) and a JSON
  header (space, grouping rule, the clustering run that wrote it, the assignment inputs' fingerprint, when
  that run read the faces, the rows at the last build).

A save writes a new generation's index file, then replaces the header atomically (temporary file, fsync,
os.replace); the header names its index file, so a reader sees the old pair or the new one, never a mix,
and a crash mid-save leaves the old pair (plus an orphan that the next save removes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from face_pipeline.domain.neighbors import FaceIndex

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeptIndex:
    """A kept index and what it reflects.

    row_face_ids : (size,) int64, the face of each index row (a face re-added later has a newer row too)
    rule : the grouping rule the pool was grouped by ({"method", "eps", "min_cluster_size"})
    run_token : the clustering run that wrote it (services compare it with the last run's, in SQL)
    fingerprint : the assignment inputs (labels, prototypes, thresholds) that run saw
    read_at : ISO time at which that run read the faces
    built_rows : rows when the index was last built from scratch (growth since then bounds drift)
    seen_ids : (m,) int64 sorted, every face the run's supervised assignment had seen (all, not only the pool)
    index : the FAISS index, or None when only the header was loaded
    """

    space: str
    rule: dict[str, Any]
    run_token: str
    fingerprint: str
    read_at: str
    built_rows: int
    row_face_ids: np.ndarray
    seen_ids: np.ndarray
    index: FaceIndex | None = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        return len(self.row_face_ids)

    def growth(self) -> float:
        """Rows added since the last build, as a share of the rows then."""
        return (self.rows - self.built_rows) / max(self.built_rows, 1)

    def with_index(self, index: FaceIndex | None) -> KeptIndex:
        return replace(self, index=index)


class ClusterIndexStore:
    """Kept indexes, one per embedding space, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _key(self, space: str) -> str:
        # Space names are free text; the digest keeps two names that sanitise alike apart.
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", space)[:80]
        return f"{safe}-{hashlib.sha1(space.encode()).hexdigest()[:8]}"

    def _header(self, space: str) -> Path:
        return self.folder / f"{self._key(space)}.meta.npz"

    def _index_file(self, space: str, generation: str) -> Path:
        return self.folder / f"{self._key(space)}.{generation}.faiss"

    def load(self, space: str, *, with_index: bool = True) -> KeptIndex | None:
        """The space's kept index (header only with with_index=False), or None when there is none or it
        cannot be read (then the caller runs in full and writes a new one)."""
        header = self._header(space)
        if not header.exists():
            return None
        try:
            with np.load(header, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                rows = np.asarray(saved["row_face_ids"], dtype=np.int64)
                seen = np.asarray(saved["seen_ids"], dtype=np.int64)
            if meta.get("version") != FORMAT_VERSION or meta.get("space") != space:
                log.warning("kept cluster index %s is of another format or space: ignored", header)
                return None
            kept = KeptIndex(
                space=space,
                rule=dict(meta["rule"]),
                run_token=str(meta["run_token"]),
                fingerprint=str(meta["fingerprint"]),
                read_at=str(meta["read_at"]),
                built_rows=int(meta["built_rows"]),
                row_face_ids=rows,
                seen_ids=seen,
            )
            index_file = self._index_file(space, str(meta["generation"]))
            if not index_file.exists():
                log.warning("kept cluster index %s lacks its index file %s: ignored", header, index_file.name)
                return None
            if not with_index:
                return kept
            import faiss  # loaded only when an index is read or written

            index = FaceIndex(faiss.read_index(str(index_file)))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a damaged file: rebuilt by a full run
            log.warning("kept cluster index %s cannot be read (%s): ignored", header, exc)
            return None
        if index.size != kept.rows:
            log.warning("kept cluster index %s has %d rows for %d faces: ignored", header, index.size, kept.rows)
            return None
        return kept.with_index(index)

    def save(self, kept: KeptIndex) -> None:
        """Write the index and its header atomically (see the module docstring)."""
        if kept.index is None:
            raise ValueError("cannot save a kept index without its index")
        if kept.index.size != kept.rows:
            raise ValueError(f"index has {kept.index.size} rows but {kept.rows} face ids were given")
        self.folder.mkdir(parents=True, exist_ok=True)
        generation = uuid.uuid4().hex
        index_file = self._index_file(kept.space, generation)
        import faiss

        native = kept.index.native
        _write_atomically(index_file, lambda tmp: faiss.write_index(native, str(tmp)))
        meta = {
            "version": FORMAT_VERSION,
            "space": kept.space,
            "rule": kept.rule,
            "run_token": kept.run_token,
            "fingerprint": kept.fingerprint,
            "read_at": kept.read_at,
            "built_rows": kept.built_rows,
            "generation": generation,
        }

        def write_header(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: given a path, np.savez would append ".npz"
                np.savez(
                    f,
                    meta=np.array(json.dumps(meta)),
                    row_face_ids=kept.row_face_ids.astype(np.int64),
                    seen_ids=kept.seen_ids.astype(np.int64),
                )

        _write_atomically(self._header(kept.space), write_header)
        self._remove_other_generations(kept.space, keep=index_file)

    def drop(self, space: str) -> None:
        """Forget the space's kept index (a run under another rule makes it stale)."""
        self._header(space).unlink(missing_ok=True)
        self._remove_other_generations(space, keep=None)

    def _remove_other_generations(self, space: str, keep: Path | None) -> None:
        for path in self.folder.glob(f"{self._key(space)}.*"):
            if path != keep and path != self._header(space) and (path.name.endswith((".faiss", ".tmp"))):
                path.unlink(missing_ok=True)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` fills a temporary file beside `path`; it is flushed to disk and then renamed over `path`."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
