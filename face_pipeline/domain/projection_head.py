"""The projection head and how to use one: build it, pick its device, project vectors through it.

Training lives in `domain.projection`, checkpoint files in `storage.checkpoints`. Shapes: n faces, d raw
dimensions, o = `out_dim` projected dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Architecture = Literal["mlp", "residual"]
Device = Literal["auto", "cpu", "cuda"]


# --- the head -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """Everything needed to rebuild a head before loading its weights."""

    in_dim: int
    out_dim: int = 128
    hidden_dim: int = 256
    architecture: Architecture = "residual"


class ProjectionHead(nn.Module):
    """Linear(d -> hidden), ReLU, Linear(hidden -> o), L2-normalise; inputs are L2-normalised first.

    architecture="mlp" is the design note's head as is. "residual" adds a linear skip path from the input,
    `skip(x) + mlp(x)`, with the MLP's last layer zero-initialised, so the untrained head IS the raw space
    (identity when d == o) or its best rank-o linear approximation (PCA basis, see `init_skip_`), and
    training only learns a correction. An untrained or barely trained "mlp" head scrambles the space.
    """

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.fc1 = nn.Linear(spec.in_dim, spec.hidden_dim)
        self.fc2 = nn.Linear(spec.hidden_dim, spec.out_dim)
        self.skip: nn.Linear | None = None
        if spec.architecture == "residual":
            self.skip = nn.Linear(spec.in_dim, spec.out_dim, bias=False)
            with torch.no_grad():  # identity on the shared coordinates until `init_skip_` says better
                self.skip.weight.copy_(torch.eye(spec.out_dim, spec.in_dim))
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    @torch.no_grad()
    def init_skip_(self, vectors: torch.Tensor) -> None:
        """Set the skip path to the top-o principal directions of unit `vectors` (t, d), when d > o.

        Uncentred on purpose: the right singular vectors of X keep the dot products (the cosine space)
        as well as any rank-o map can, where centred PCA would change which faces are near. With fewer
        faces than o (a 512-d space named from 60 faces), the rows past t complete the basis orthonormally.
        """
        if self.skip is None or self.spec.in_dim <= self.spec.out_dim:
            return
        x = F.normalize(vectors.float(), dim=1)
        _, _, vh = torch.linalg.svd(x, full_matrices=len(x) < self.spec.out_dim)
        basis = vh[: self.spec.out_dim]
        basis = basis * torch.sign(basis.sum(dim=1, keepdim=True) + 1e-12)  # deterministic signs
        self.skip.weight.copy_(basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, o) unit rows."""
        x = F.normalize(x, dim=1)
        y = self.fc2(F.relu(self.fc1(x)))
        if self.skip is not None:
            y = y + self.skip(x)
        return F.normalize(y, dim=1)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> ProjectionHead:
        """Rebuild a head from its weights alone (the shapes and the presence of `skip` say it all)."""
        hidden, in_dim = state_dict["fc1.weight"].shape
        out_dim = state_dict["fc2.weight"].shape[0]
        architecture: Architecture = "residual" if "skip.weight" in state_dict else "mlp"
        head = cls(HeadSpec(int(in_dim), int(out_dim), int(hidden), architecture))
        head.load_state_dict(state_dict)
        return head


def resolve_device(device: Device | str = "auto") -> torch.device:
    """'auto' picks CUDA when torch sees a GPU, else the CPU; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU (use 'auto' or 'cpu')")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


@torch.no_grad()
def project_tensor(head: ProjectionHead, x: torch.Tensor, batch_size: int = 65_536) -> torch.Tensor:
    was_training = head.training
    head.eval()
    out = torch.cat([head(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])
    head.train(was_training)
    return out


# --- using a trained head -------------------------------------------------------------------------------


def project(
    vectors: np.ndarray,
    head: ProjectionHead | Mapping[str, torch.Tensor],
    *,
    batch_size: int = 65_536,
    device: Device | str = "auto",
) -> np.ndarray:
    """Map raw vectors (n, d) through a head (or its state dict) to unit vectors (n, o) float32.

    No gradients, `batch_size` rows at a time; a head passed in is moved to the chosen device.
    """
    if not isinstance(head, ProjectionHead):
        head = ProjectionHead.from_state_dict(head)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != head.spec.in_dim:
        raise ValueError(f"expected vectors of shape (n, {head.spec.in_dim}), got {vectors.shape}")
    target = resolve_device(device)
    model = head.to(target)
    out = np.empty((vectors.shape[0], head.spec.out_dim), np.float32)
    for start in range(0, vectors.shape[0], batch_size):
        chunk = torch.from_numpy(vectors[start : start + batch_size]).to(target)
        out[start : start + batch_size] = project_tensor(model, chunk).cpu().numpy()
    return out
