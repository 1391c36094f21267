"""Checkpoint files of a trained head: the weights (a torch state dict) and a JSON file beside them.

Both are written under a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from face_pipeline.domain.metrics import jsonable
from face_pipeline.domain.projection_head import ProjectionHead

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write the weights to `path` (a torch state dict) and `metadata` (plus the file format, the head's
    dimensions and the time) to `path` with a .json suffix. Returns the metadata path."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ProjectionHead.from_state_dict(dict(state_dict))
    body = {
        "format": CHECKPOINT_FORMAT,
        "in_dim": head.spec.in_dim,
        "out_dim": head.spec.out_dim,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        **jsonable(dict(metadata)),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(state_dict), tmp)
    os.replace(tmp, path)
    tmp_meta = meta_path.with_name(meta_path.name + ".tmp")
    tmp_meta.write_text(json.dumps(body, indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    return meta_path


def load_checkpoint(path: str | Path) -> tuple[ProjectionHead, dict[str, Any]]:
    """Read a head written by `save_checkpoint`: (head in eval mode on the CPU, metadata dict)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint needs both {path} and {meta_path}")
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{meta_path}: unsupported checkpoint format {metadata.get('format')!r}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    head = ProjectionHead.from_state_dict(state_dict)
    if head.spec.in_dim != metadata["in_dim"] or head.spec.out_dim != metadata["out_dim"]:
        raise ValueError(f"{path}: weights do not match the dimensions in {meta_path.name}")
    return head.eval(), metadata
