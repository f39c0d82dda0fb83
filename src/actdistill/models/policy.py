"""The policy contract shared by teacher, students and baselines (LeRobot style).

`forward(batch) -> (loss, logs)` for training, `select_action(observation)`
and `reset()` for closed loop. Observations are batched dicts:
OBS_IMAGE (B, H, W, 3) uint8, OBS_STATE (B, 7), TASK list[str].
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from actdistill.constants import OBS_IMAGE, OBS_LANG, OBS_STATE, STATE_DIM, TASK
from actdistill.models.language import shared_language_encoder


class ObservationError(ValueError):
    """An observation does not match what the policy was trained on."""


class PolicyMixin:
    """Action queue (receding horizon) and observation checks on top of `predict_chunk`."""

    image_size: int
    n_action_steps: int

    @property
    def state_dim(self) -> int:
        """State values per observation: the size of the state statistics the model (or the model it wraps) keeps."""
        for m in (self, getattr(self, "vla", None), getattr(self, "teacher", None)):
            stats = getattr(m, "state_mean", None) if m is not None else None
            if isinstance(stats, torch.Tensor):
                return stats.numel()
        return STATE_DIM

    def reset(self) -> None:
        self._queue: deque = deque()
        self._last_layer_mask: torch.Tensor | None = None

    def prepare_observation(self, observation: dict) -> dict:
        for key in (OBS_IMAGE, OBS_STATE, TASK):
            if key not in observation:
                raise ObservationError(f"The observation lacks '{key}'; it needs {OBS_IMAGE}, {OBS_STATE} and {TASK}.")
        img = np.asarray(observation[OBS_IMAGE])
        if img.ndim == 3:
            img = img[None]
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] != 3 or tuple(img.shape[1:3]) != (self.image_size, self.image_size):
            raise ObservationError(
                f"Image of shape {tuple(img.shape)} and dtype {img.dtype} does not match this policy, which was trained on "
                f"{self.image_size}x{self.image_size} RGB uint8 images (B, H, W, 3); render at that size.")
        img = torch.from_numpy(np.ascontiguousarray(img))
        try:
            with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused below
                state = np.asarray(observation[OBS_STATE], dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ObservationError(f"The state is not an array of numbers ({err}).") from err
        state_dim = self.state_dim
        if state.size != img.shape[0] * state_dim:
            raise ObservationError(f"State has {state.size} values for {img.shape[0]} image(s); the policy needs {state_dim} "
                                   "per image (on Meta-World: hand xyz, gripper, goal xyz).")
        if not np.isfinite(state).all():
            raise ObservationError("The state contains NaN or infinite values.")
        state = torch.from_numpy(state.reshape(img.shape[0], state_dim))
        tasks = observation[TASK]
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if len(tasks) != img.shape[0]:
            raise ObservationError(f"Got {len(tasks)} instructions for a batch of {img.shape[0]} images.")
        if not all(isinstance(t, str) and t.strip() for t in tasks):
            raise ObservationError("Every instruction must be a non-empty string.")
        lang = shared_language_encoder().encode(tasks)
        return {OBS_IMAGE: img, OBS_STATE: state, OBS_LANG: lang, TASK: tasks}

    @torch.no_grad()
    def select_action(self, observation: dict) -> torch.Tensor:
        """(B, 4) actions; a new chunk is predicted every `n_action_steps` calls."""
        if not hasattr(self, "_queue"):
            self.reset()
        self._last_layer_mask = None
        if not self._queue:
            was_training = self.training  # type: ignore[attr-defined]
            self.eval()  # type: ignore[attr-defined]
            batch = self.prepare_observation(observation)
            chunk, mask = self.predict_chunk(batch)  # (B, chunk, 4), (B, L) bool
            self.train(was_training)  # type: ignore[attr-defined]
            self._last_layer_mask = mask
            for i in range(self.n_action_steps):
                self._queue.append(chunk[:, i])
        return self._queue.popleft()

    def pop_layer_mask(self) -> torch.Tensor | None:
        """Which decoder layers each row executed in this step's forward, or None if no forward ran."""
        mask, self._last_layer_mask = getattr(self, "_last_layer_mask", None), None
        return mask

    def predict_chunk(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
