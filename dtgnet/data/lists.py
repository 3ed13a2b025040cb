"""Dataset index files: UCF101, HMDB51, Kinetics csv, generic lists, class folders, frame folders.

Each parser gives a :class:`VideoList`: the data root, the class names, and one :class:`Entry` per video.
A malformed file is a :class:`DataError` naming file and line. An entry whose label is unknown or whose path
leaves the data root is kept with ``problem`` set, so `scan` reports it and training counts and skips it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


@dataclass
class Entry:
    path: str
    """Path relative to the data root, as written in the list."""
    label: int
    """Class index, -1 when the list gives none."""
    problem: str = ""
    """Why this entry cannot be used ('' when fine)."""


MISSING = "file not found"


@dataclass
class VideoList:
    root: Path
    classes: list[str]
    entries: list[Entry] = field(default_factory=list)
    source: str = ""

    def full_path(self, entry: Entry) -> Path:
        return self.root / entry.path

    @property
    def good(self) -> list[Entry]:
        return [e for e in self.entries if not e.problem]

    def __len__(self) -> int:
        return len(self.entries)

    def require_present(self) -> None:
        """Stop when most listed videos are missing: ``data.root`` then most likely names the wrong folder."""
        missing = [e for e in self.entries if e.problem == MISSING]
        if missing and 2 * len(missing) > len(self.entries):
            raise DataError(f"{self.source}: {len(missing)} of {len(self.entries)} listed videos are missing under "
                            f"data.root={self.root} (first: {self.full_path(missing[0])}); is data.root right?")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    return [ln.strip() for ln in text.splitlines()]


def _check_inside(root: Path, rel: str) -> str:
    """'' if root/rel stays inside root, else the reason."""
    if Path(rel).is_absolute():
        return f"absolute path not allowed (must be relative to {root})"
    resolved_root = root.resolve()
    target = (root / rel).resolve()
    if target != resolved_root and resolved_root not in target.parents:
        return f"path escapes the data root {root}"
    return ""


def _entry(root: Path, rel: str, label: int, num_classes: int) -> Entry:
    problem = _check_inside(root, rel)
    if not problem and num_classes and not (0 <= label < num_classes) and label != -1:
        problem = f"unknown label {label} (classes 0..{num_classes - 1})"
    if not problem and not (root / rel).exists():  # one stat per entry: a wrong data.root shows at once
        problem = MISSING
    return Entry(rel, label, problem)


def read_classes(path: Path) -> list[str]:
    """One class per line, or UCF101's ``index name`` classInd.txt."""
    names = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            if int(parts[0]) != len(names) + 1:
                raise DataError(f"{path}:{n}: class index {parts[0]} out of order (expected {len(names) + 1})")
            names.append(parts[1])
        else:
            names.append(line)
    if not names:
        raise DataError(f"{path}: no classes")
    return names


def parse_list(list_path: Path, root: Path, classes: list[str] | None = None) -> VideoList:
    """Generic list: ``relative/path label_index`` (or ``relative/path class_name``) per line."""
    rows = []
    for n, line in enumerate(_read_lines(list_path), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 1:
            rows.append((parts[0], None, n))
        else:
            rows.append((parts[0], parts[1], n))
    if classes is None:
        numeric = all(lbl is None or lbl.lstrip("-").isdigit() for _, lbl, _ in rows)
        if numeric:
            top = max((int(lbl) for _, lbl, _ in rows if lbl is not None), default=-1)
            classes = [str(i) for i in range(top + 1)]
        else:
            classes = sorted({lbl for _, lbl, _ in rows if lbl is not None})
    index = {c: i for i, c in enumerate(classes)}
    out = VideoList(root, classes, source=str(list_path))
    for rel, lbl, n in rows:
        if lbl is None:
            label = -1
        elif lbl.lstrip("-").isdigit():
            label = int(lbl)
        elif lbl in index:
            label = index[lbl]
        else:
            out.entries.append(Entry(rel, -1, f"unknown label {lbl!r} ({list_path}:{n})"))
            continue
        out.entries.append(_entry(root, rel, label, len(classes)))
    return out


def parse_ucf101(list_path: Path, root: Path, class_ind: Path) -> VideoList:
    """Official UCF101 lists: trainlist0N.txt (``Class/v_x.avi k``, k 1-based) or testlist0N.txt (no label)."""
    classes = read_classes(class_ind)
    index = {c: i for i, c in enumerate(classes)}
    out = VideoList(root, classes, source=str(list_path))
    for n, line in enumerate(_read_lines(list_path), 1):
        if not line:
            continue
        parts = line.split()
        rel = parts[0]
        folder = rel.split("/")[0]
        if len(parts) >= 2:
            if not parts[1].isdigit():
                raise DataError(f"{list_path}:{n}: label {parts[1]!r} is not a number")
            label = int(parts[1]) - 1
        else:
            label = index.get(folder, -2)
        if label == -2:
            out.entries.append(Entry(rel, -1, f"unknown class folder {folder!r} ({list_path}:{n})"))
            continue
        out.entries.append(_entry(root, rel, label, len(classes)))
    return out


def parse_hmdb51(split_dir: Path, root: Path, split: int, subset: str) -> VideoList:
    """HMDB51 split files ``<class>_test_split<N>.txt`` with lines ``name.avi 0|1|2`` (1 train, 2 test)."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: HMDB51 split directory not found")
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DataError(f"{split_dir}: no '*_test_split{split}.txt' files")
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    wanted = {"train": "1", "test": "2", "val": "2"}[subset]
    out = VideoList(root, classes, source=str(split_dir))
    for label, f in enumerate(files):
        for n, line in enumerate(_read_lines(f), 1):
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{f}:{n}: expected 'name.avi 0|1|2', got {line!r}")
            if parts[1] == wanted:
                out.entries.append(_entry(root, f"{classes[label]}/{parts[0]}", label, len(classes)))
    return out


def parse_kinetics(csv_path: Path, root: Path, classes: list[str] | None = None) -> VideoList:
    """Kinetics csv (``label,youtube_id,time_start,time_end,split``); files named ``<id>_<start>_<end>.mp4``
    under ``root/<label>/`` (or flat in root)."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: csv file not found")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: csv header must contain {', '.join(sorted(need))}")
        rows = list(reader)
    if classes is None:
        classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    out = VideoList(root, classes, source=str(csv_path))
    for n, r in enumerate(rows, 2):
        try:
            name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}.mp4"
        except ValueError:
            raise DataError(f"{csv_path}:{n}: bad time_start/time_end") from None
        rel = f"{r['label']}/{name}" if (root / r["label"]).is_dir() else name
        if r["label"] not in index:
            out.entries.append(Entry(rel, -1, f"unknown label {r['label']!r} ({csv_path}:{n})"))
        else:
            out.entries.append(_entry(root, rel, index[r["label"]], len(classes)))
    return out


def parse_folders(root: Path, base: Path | None = None, frames: bool = False,
                  classes: list[str] | None = None) -> VideoList:
    """``base/<class>/<video file>`` (or ``<class>/<frame folder>/`` when ``frames``); ``base`` (default: the
    root) lies inside ``root``, and paths are stored relative to ``root``."""
    base = base if base is not None else root
    if not base.is_dir():
        raise DataError(f"{base}: class-folder directory not found")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    classes = classes or found
    if not classes:
        raise DataError(f"{base}: no class folders")
    out = VideoList(root, classes, source=str(base))
    for label, c in enumerate(classes):
        folder = base / c
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if (frames and p.is_dir()) or (not frames and p.suffix.lower() in VIDEO_SUFFIXES):
                out.entries.append(Entry(os.path.relpath(p, root), label))
    return out


def load_split(data_cfg, subset: str) -> VideoList:
    """The train, val or test list described by a :class:`~dtgnet.config.DataConfig`."""
    root = Path(data_cfg.root)
    list_value = {"train": data_cfg.train_list, "val": data_cfg.val_list, "test": data_cfg.test_list}[subset]
    classes = read_classes(Path(data_cfg.classes)) if data_cfg.classes and data_cfg.format != "ucf101" else None
    fmt = data_cfg.format
    if fmt == "hmdb51":
        return parse_hmdb51(Path(list_value or data_cfg.train_list), root, data_cfg.split, subset)
    if not list_value:
        raise DataError(f"data.{subset}_list is not set")
    lp = Path(list_value)
    if fmt == "ucf101":
        if not data_cfg.classes:
            raise DataError("data.classes must name UCF101's classInd.txt")
        return parse_ucf101(lp, root, Path(data_cfg.classes))
    if fmt == "kinetics":
        return parse_kinetics(lp, root, classes)
    if fmt in ("folders", "frames") and (lp.is_dir() or (root / list_value).is_dir()):
        base = lp if lp.is_dir() else root / list_value
        return parse_folders(root, base, frames=(fmt == "frames"), classes=classes)
    return parse_list(lp, root, classes)
