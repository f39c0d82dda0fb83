"""Frames of a demo file in memory, served as training batches.

Each sample is one frame: its image, state, instruction embedding and the
chunk of the next `chunk` actions (steps past the episode end are padded
with the last action and flagged in ACTION_PAD). Sample ids are global frame
indices in file order, so a teacher cache keyed by them does not depend on
batch order.
"""

from __future__ import annotations

import numpy as np
import torch

from actdistill.constants import ACTION, ACTION_PAD, OBS_IMAGE, OBS_LANG, OBS_STATE, SAMPLE_ID, TASK_ID
from actdistill.data.hdf5 import DemoSet
from actdistill.models.language import shared_language_encoder


class FrameDataset:
    def __init__(self, demoset: DemoSet, chunk_size: int, task_names: tuple[str, ...] | None = None):
        demos = demoset.demos
        self.fingerprint = demoset.fingerprint
        self.content_hash = demoset.content_hash
        self.chunk_size = chunk_size
        self.task_names = tuple(task_names or demoset.tasks)
        unknown = {d.task for d in demos} - set(self.task_names)
        if unknown:
            raise ValueError(f"The dataset holds tasks {sorted(unknown)} that the model's task list does not name.")
        self.images = torch.from_numpy(np.concatenate([d.images for d in demos]))  # (N, H, W, 3) uint8
        self.states = torch.cat([torch.from_numpy(d.states) for d in demos])  # (N, 7)
        self.actions = torch.cat([torch.from_numpy(d.actions) for d in demos])  # (N, 4)
        lengths = torch.tensor([len(d.actions) for d in demos])
        ends = torch.cumsum(lengths, 0)
        self.episode_end = torch.repeat_interleave(ends, lengths)  # (N,) exclusive end of each frame's episode
        self.episode = torch.repeat_interleave(torch.arange(len(demos)), lengths)
        self.task_id = torch.repeat_interleave(torch.tensor([self.task_names.index(d.task) for d in demos]), lengths)
        instructions = sorted({d.instruction for d in demos})
        self.instructions = instructions
        self.lang_table = shared_language_encoder().encode(instructions)  # (I, 384)
        self.lang_id = torch.repeat_interleave(torch.tensor([instructions.index(d.instruction) for d in demos]), lengths)
        self.image_size = int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def batch(self, idx: torch.Tensor) -> dict:
        """Gather a batch of frames by global index."""
        steps = idx.unsqueeze(1) + torch.arange(self.chunk_size).unsqueeze(0)  # (B, chunk)
        end = self.episode_end[idx].unsqueeze(1)
        pad = steps >= end
        steps = torch.minimum(steps, end - 1)
        return {
            OBS_IMAGE: self.images[idx],
            OBS_STATE: self.states[idx],
            OBS_LANG: self.lang_table[self.lang_id[idx]],
            ACTION: self.actions[steps],  # (B, chunk, 4)
            ACTION_PAD: pad,
            SAMPLE_ID: idx,
            TASK_ID: self.task_id[idx],
        }

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states.mean(0), self.states.std(0).clamp_min(1e-3)
