"""`dtgnet data scan`: check every entry of a list and write a manifest of good and bad items."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VideoDecodeError
from .lists import VideoList
from .video import get_reader, iter_square_frames

KINDS = (("file not found", "missing"), ("empty file", "empty"), ("truncated", "truncated"),
         ("decoding failed", "truncated"), ("unknown", "unknown label"), ("escapes", "outside root"),
         ("absolute path", "outside root"))


def reason_kind(reason: str) -> str:
    """A short category for a bad item's reason (summaries group by it)."""
    return next((kind for key, kind in KINDS if key in reason), "undecodable")


def scan(videos: VideoList, backend: str = "pyav", progress: bool = True) -> dict:
    """``{"ok": [paths], "bad": [{"path", "reason"}]}``. A video is fine when every frame decodes (a
    stream that breaks half-way is caught, not only one cut short at the end)."""
    from tqdm import tqdm

    reader = get_reader(backend)
    ok, bad = [], []
    for entry in tqdm(videos.entries, desc="scan", disable=not progress, unit="video"):
        if entry.problem:
            bad.append({"path": entry.path, "reason": entry.problem, "kind": reason_kind(entry.problem)})
            continue
        path = videos.full_path(entry)
        try:
            for _ in iter_square_frames(reader, path, []):  # every frame decoded, none kept: bounded memory
                pass
        except VideoDecodeError as e:
            bad.append({"path": entry.path, "reason": e.reason, "kind": reason_kind(e.reason)})
            continue
        ok.append(entry.path)
    return {"ok": ok, "bad": bad}


def write_manifest(manifest: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=1))
