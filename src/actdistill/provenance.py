"""What produced a number: code revision, package versions, machine and threads.

Every stage header and every results file carries `provenance()`, so two runs
that disagree can be traced to a code change, a version change or a machine.
`version_changes` compares two records in one line for a stage reused by
fingerprint; `reproduction_check` compares a run's rows with committed ones.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from actdistill import __version__

# The packages whose versions can change a number (simulation, training, numerics, storage).
KEY_PACKAGES = ("torch", "transformers", "accelerate", "diffusers", "safetensors", "mujoco", "metaworld", "gymnasium",
                "numpy", "h5py")
PROVENANCE_FIELDS = ("actdistill", "git", "python", "packages", "machine", "threads")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def package_versions() -> dict[str, str | None]:
    """Installed version of each key package (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(path: Path | None = None) -> dict[str, Any]:
    """The git revision of the source tree the package is imported from, and whether it has uncommitted changes.

    An installed (non-editable) package has no repository: revision and dirty are then None.
    """
    root = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    # a non-editable install inside some other repository (a venv in a user's project) is not that repository's code
    if rev is None or git("ls-files", "--error-unmatch", "__init__.py") is None:
        return {"revision": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_STARTED_AT: dict[str, Any] | None = None  # the code revision when the command began (record_start)


def record_start() -> None:
    """Remember the code revision a command starts from; a later record written by a long command that outlived a
    commit then carries both (`git` at write time, `git_at_start` when they differ)."""
    global _STARTED_AT
    _STARTED_AT = git_state()


def provenance() -> dict[str, Any]:
    """One record of where and with what a result was produced."""
    accel = None
    if torch.cuda.is_available():
        accel = torch.cuda.get_device_name(0)
    now = git_state()
    started = {"git_at_start": _STARTED_AT} if _STARTED_AT is not None and _STARTED_AT != now else {}
    return {
        "actdistill": __version__,
        "git": now,
        **started,
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "accelerator": accel},
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                    **{k: os.environ.get(k) for k in _THREAD_VARS}},
    }


def check_provenance(record: Any, where: str) -> None:
    """Raise ValueError, in one sentence, unless `record` has every provenance field."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} has no provenance record.")
    missing = [k for k in PROVENANCE_FIELDS if k not in record]
    if missing:
        raise ValueError(f"{where} has a provenance record without {', '.join(missing)}.")
    absent = [k for k in KEY_PACKAGES if k not in record["packages"]]
    if absent:
        raise ValueError(f"{where} has a provenance record without the versions of {', '.join(absent)}.")


def version_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between the record an artifact was made with and the current one, as short phrases."""
    if not old:
        return ["it was made before provenance was recorded"]
    changes = []
    for name, now in new["packages"].items():
        then = old.get("packages", {}).get(name)
        if then != now:
            changes.append(f"{name} {then} -> {now}")
    if old.get("python") != new["python"]:
        changes.append(f"Python {old.get('python')} -> {new['python']}")
    rev_old, rev_new = (old.get("git") or {}).get("revision"), new["git"]["revision"]
    if rev_old and rev_new and rev_old != rev_new:
        changes.append(f"code {rev_old[:8]} -> {rev_new[:8]}")
    if (old.get("machine") or {}).get("cpu") != new["machine"]["cpu"]:
        changes.append(f"CPU {(old.get('machine') or {}).get('cpu')!r} -> {new['machine']['cpu']!r}")
    return changes


def same_environment(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Same Python and key package versions (the code revision and the machine may differ)."""
    if not a or not b:
        return False
    return a.get("python") == b.get("python") and a.get("packages") == b.get("packages")


def reproduction_check(rows: list[dict], dataset_hash: str, config: Mapping[str, Any], reference: Mapping[str, Any]) -> dict:
    """Compare a run's rows with a committed results file of the same config.

    Each row is within tolerance when its mean success lies inside the reference row's 95% CI; the dataset
    must have the reference's content hash. Returns {"comparable": bool, "reason": str, "rows": [...],
    "dataset_match": bool | None}.
    """
    def run_settings(c: Mapping[str, Any]) -> dict:  # the output folder does not change a number
        as_json = json.loads(json.dumps(dict(c)))  # tuples in memory are lists in the committed file
        return {k: v for k, v in as_json.items() if k != "out"}

    if run_settings(reference.get("config", {})) != run_settings(config):
        return {"comparable": False, "reason": "the reference was made with another config", "rows": [], "dataset_match": None}
    ref_prov, now = reference.get("provenance"), provenance()
    if not same_environment(ref_prov, now):
        why = "it records no provenance" if not ref_prov else "its package versions differ: " + ", ".join(
            c for c in version_changes(ref_prov, now) if not c.startswith(("code", "CPU")))
        return {"comparable": False, "reason": f"the reference is not from this environment ({why})", "rows": [],
                "dataset_match": None}
    ref_rows = {r["name"]: r for r in reference.get("rows", [])}
    out = []
    for r in rows:
        ref = ref_rows.get(r["name"])
        if ref is None:
            continue
        lo, hi = ref["success_ci95"]
        out.append({"name": r["name"], "success": r["success_mean"], "reference": ref["success_mean"],
                    "reference_ci95": [lo, hi], "within": bool(lo <= r["success_mean"] <= hi)})
    ref_hash = reference.get("dataset_content_hash")
    return {"comparable": True, "reason": "", "rows": out,
            "dataset_match": None if ref_hash is None else ref_hash == dataset_hash}


def reference_results_path() -> Path:
    """Where a source checkout keeps the committed default-run results (absent in an installed wheel)."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mt10_run.json"
