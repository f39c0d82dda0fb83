"""The teacher cache: per-layer semantic vectors z_l^T and probe actions a_l^T of every training frame.

Keyed by sample id (global frame index), never by batch position, and stamped
with a fingerprint of the teacher weights, the dataset and the probe heads.
Distillation refuses a cache whose fingerprint does not match (docs/design.md "Teacher probing").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from actdistill.artifacts import ArtifactError, atomic_save_tensors, load_tensors
from actdistill.constants import CACHE_PROBE_ACTION, CACHE_SAMPLE_IDS, CACHE_SEMANTIC

CACHE_FILE = "teacher_cache.safetensors"


@dataclass
class TeacherCache:
    semantic: torch.Tensor  # (N, L, d_s)
    probe_action: torch.Tensor  # (N, L, chunk, 4)
    sample_ids: torch.Tensor  # (N,) int64
    fingerprint: dict  # teacher_weights, dataset, heads

    def __post_init__(self) -> None:
        n = self.sample_ids.shape[0]
        if self.semantic.shape[0] != n or self.probe_action.shape[0] != n:
            raise ArtifactError("The teacher cache is inconsistent (tensor lengths differ); write it again with `actdistill probe`.")
        self._row = torch.full((int(self.sample_ids.max()) + 1,), -1, dtype=torch.long)
        self._row[self.sample_ids] = torch.arange(n)

    def lookup(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of the given sample ids: (B, L, d_s), (B, L, chunk, 4)."""
        ids = sample_ids.cpu()
        if int(ids.max()) >= self._row.numel() or (self._row[ids] < 0).any():
            raise ArtifactError("The teacher cache lacks some training samples; it was written for another dataset.")
        rows = self._row[ids]
        return self.semantic[rows], self.probe_action[rows]

    def save(self, path: Path) -> None:
        atomic_save_tensors(path, {CACHE_SEMANTIC: self.semantic, CACHE_PROBE_ACTION: self.probe_action,
                                   CACHE_SAMPLE_IDS: self.sample_ids},
                            metadata={"fingerprint": json.dumps(self.fingerprint, sort_keys=True)})

    @classmethod
    def load(cls, path: Path, expect: dict) -> "TeacherCache":
        """Load and check the fingerprint against `expect` (teacher_weights, dataset, heads)."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"Teacher cache not found at {path}; run `actdistill probe` first.")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise ArtifactError(f"Teacher cache {path} is corrupt ({err}); run `actdistill probe` again.") from err
        found = json.loads(meta.get("fingerprint", "{}"))
        bad = [k for k in expect if found.get(k) != expect[k]]
        if bad:
            raise ArtifactError(
                f"The teacher cache {path} was written for another {' and '.join(bad)} "
                f"(cache {[found.get(k) for k in bad]}, expected {[expect[k] for k in bad]}); run `actdistill probe` again.")
        t = load_tensors(path, "the teacher cache")
        return cls(t[CACHE_SEMANTIC], t[CACHE_PROBE_ACTION], t[CACHE_SAMPLE_IDS], found)
