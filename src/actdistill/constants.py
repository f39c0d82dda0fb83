"""Names used across stages: batch keys, cache keys, artifact file names.

Kept in one place so that a key is spelled once (STYLE.md item 6).
"""

# Batch / observation keys (LeRobot-style names).
OBS_IMAGE = "observation.image"  # (B, H, W, 3) uint8 or (B, 3, H, W) float
OBS_STATE = "observation.state"  # (B, 7): hand xyz, gripper opening, goal xyz
OBS_LANG = "observation.language"  # (B, 384): sentence embedding of the instruction
TASK = "task"  # list[str]: the language instruction of each row
ACTION = "action"  # (B, chunk, 4): the next `chunk` actions
ACTION_PAD = "action_is_pad"  # (B, chunk) bool: chunk steps past the episode end
SAMPLE_ID = "sample_id"  # (B,) int64: global frame index in the dataset
TASK_ID = "task_id"  # (B,) int64: index into the benchmark's task list
ROUTER_VIEW = "router_view"  # dict: a perturbed copy of the observation keys, read only by the router (distill)

STATE_DIM = 7
ACTION_DIM = 4

# Teacher-cache tensor names (probe -> distill).
CACHE_SEMANTIC = "semantic"  # (N, L, d_s) float32
CACHE_PROBE_ACTION = "probe_action"  # (N, L, chunk, 4) float32
CACHE_SAMPLE_IDS = "sample_ids"  # (N,) int64

# Artifact file names inside a stage folder.
CONFIG_FILE = "config.json"
HEADER_FILE = "header.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
TRAIN_META_FILE = "train_state.json"
DATASET_FILE = "demos.hdf5"
RESULTS_FILE = "results.json"
RESULTS_TABLE = "results.md"
