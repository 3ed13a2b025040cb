"""What ``dtgnet predict`` and ``dtgnet embed`` run on: video files, folders (searched recursively) and list
files, resolved to a list of video paths before any work starts."""
from __future__ import annotations

from pathlib import Path

from ..data.lists import VIDEO_SUFFIXES
from ..errors import DataError

LIST_SUFFIXES = (".txt", ".lst", ".list")


def _from_list(path: Path, root: Path | None) -> list[Path]:
    """A list file: the first field of each non-empty line (``path [label]`` lists, UCF101 split files),
    relative to ``root`` or to the list's own folder."""
    base = root if root is not None else path.parent
    out = []
    for line in path.read_text(errors="replace").splitlines():
        fields = line.strip().replace(",", " ").split()
        if fields and not fields[0].startswith("#"):
            name = Path(fields[0])
            out.append(name if name.is_absolute() else base / name)
    return out


def resolve_inputs(inputs: list[str], root: str = "") -> list[Path]:
    """Every video named by ``inputs`` in order, each once. A video file is taken whatever its suffix (the
    decoder says whether it is one); a folder gives its files with a video suffix, recursively; a ``.txt`` /
    ``.lst`` / ``.list`` file lists videos. A missing input or an input with no videos is a one-line error."""
    if not inputs:
        raise DataError("no input: name video files, folders or list files")
    base = Path(root) if root else None
    if base is not None and not base.is_dir():
        raise DataError(f"--root: folder not found: {root}")
    found: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not videos:
                raise DataError(f"{given}: folder holds no videos (looked for {', '.join(VIDEO_SUFFIXES)})")
            found += videos
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed = _from_list(path, base)
            if not listed:
                raise DataError(f"{given}: list file names no videos")
            found += listed
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{given}: no such file or folder")
    return list(dict.fromkeys(found))
