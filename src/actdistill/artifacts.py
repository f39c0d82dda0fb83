"""Files between stages: atomic writes, headers, fingerprints (STYLE.md item 5).

Every artifact folder holds a `header.json` naming what produced it, the hash
of the config that produced it and the fingerprints of its inputs. A stage
reads the header of its input and stops with one sentence if it does not match.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from actdistill import __version__
from actdistill.constants import HEADER_FILE
from actdistill.errors import ConfigError
from actdistill.provenance import provenance


class ArtifactError(RuntimeError):
    """An input artifact is missing, corrupt or does not match what a stage needs."""


_WRITE_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for this file system"}


class ArtifactWriteError(ArtifactError):
    """An artifact could not be written (disk full, no permission); the previous version is untouched."""


def write_failed(path: Path, err: OSError) -> ArtifactWriteError:
    reason = _WRITE_REASONS.get(err.errno, err.strerror or str(err))
    return ArtifactWriteError(f"Could not write {path}: {reason}; any earlier version of it and every other artifact are "
                              "untouched (free space or choose a writable output folder, then rerun: finished stages are reused).")


def _atomic(path: Path, write) -> None:
    """`write(tmp_name)` into a temporary file beside `path`, then rename: a kill never leaves half a file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise write_failed(path, err) from err
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, write)


def save_figure(fig, path: Path, dpi: int = 150) -> None:
    """A matplotlib figure as PNG, written atomically like every other artifact."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_report(out: Path, report: dict, table: str, example: str) -> Path:
    """A report as `out` (.json) with its markdown table beside it (.md); one sentence if `out` is not a .json
    (`example`: a file name to suggest)."""
    out = Path(out)
    if out.suffix != ".json":
        raise ConfigError(f"--out names the JSON file of the report (e.g. {example}), got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())
    return out


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found at {path}; run the stage that writes it first.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{what} at {path} is not valid JSON ({err}); delete it and rerun the stage that writes it.") from err


ALIASES_KEY = "actdistill.aliases"  # safetensors metadata: {name: name it shares its tensor with}


def atomic_save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a state dict; a tensor held under two names (tied weights, a module held twice) is stored once."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in tensors.items():
        if not v.numel():
            continue
        key = (v.device, v.untyped_storage().data_ptr())
        if key in first:
            src = tensors[first[key]]
            if (v.shape, v.stride(), v.storage_offset(), v.dtype) != (src.shape, src.stride(), src.storage_offset(), src.dtype):
                raise ArtifactError(f"{first[key]!r} and {k!r} are different views of one storage, which {path} cannot "
                                    "store; give each its own tensor.")
            aliases[k] = first[key]
        else:
            first[key] = k
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items() if k not in aliases}
    meta = dict(metadata or {})
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases)
    _atomic(path, lambda tmp: save_file(cpu, tmp, metadata=meta or None))


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} not found at {path}; run the stage that writes it first.")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
            aliases = json.loads((f.metadata() or {}).get(ALIASES_KEY, "{}"))
        for name, src in aliases.items():  # tied names share one tensor again
            tensors[name] = tensors[src]
        return tensors
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{what} at {path} is corrupt or truncated ({err}); delete it and rerun the stage that writes it.") from err


def load_checked_weights(folder: Path, header: Mapping[str, Any], what: str, redo: str) -> dict[str, torch.Tensor]:
    """`folder/model.safetensors`, refused unless it hashes to the `weights_hash` its header recorded."""
    from actdistill.constants import WEIGHTS_FILE

    weights = load_tensors(Path(folder) / WEIGHTS_FILE, what)
    if hash_tensors(weights) != header.get("weights_hash"):
        raise ArtifactError(f"The {what} in {folder} do not match its header (changed or partly written); {redo}.")
    return weights


def hash_json(obj: Any) -> str:
    """Stable short hash of a JSON-able object (configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of a state dict: names, shapes, dtypes and exact bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def make_header(stage: str, config: Mapping[str, Any], inputs: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "producer": f"actdistill {__version__}",
        "stage": stage,
        "config_hash": hash_json(dict(config)),
        "inputs": dict(inputs),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "provenance": provenance(),
        **extra,
    }


def weights_hash_of(folder: Path) -> str:
    """The weights hash a finished artifact's header recorded."""
    return read_json(Path(folder) / HEADER_FILE, "the header")["weights_hash"]


def write_header(folder: Path, header: Mapping[str, Any]) -> None:
    atomic_write_json(Path(folder) / HEADER_FILE, dict(header))


def read_header(folder: Path, stage: str) -> dict[str, Any]:
    header = read_json(Path(folder) / HEADER_FILE, f"the {stage} header")
    if header.get("stage") != stage:
        raise ArtifactError(f"{folder} holds a '{header.get('stage')}' artifact, not a '{stage}' one; point to the output folder of `actdistill {stage}`.")
    return header
