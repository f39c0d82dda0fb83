"""Results files written into folders of their own, as the commands that read them find them."""

from __future__ import annotations

import json
from pathlib import Path


def write_in_folders(root: Path, prefix: str, filename: str, contents: tuple[dict, ...]) -> list[Path]:
    """`root/<prefix><i>/<filename>` holding each of `contents` as JSON; the folders, in order."""
    folders = []
    for i, content in enumerate(contents):
        folder = Path(root) / f"{prefix}{i}"
        folder.mkdir(parents=True)
        (folder / filename).write_text(json.dumps(content))
        folders.append(folder)
    return folders
