"""Datasets of two views per video (contrastive training), labelled sequences and multi-clip evaluation.

Unreadable videos are never replaced by zeros: the item is skipped, another video is drawn in its place,
and the failure travels with the batch (``bad`` field) so the training loop can count it, name it in the
log and stop once more than ``data.max_bad_fraction`` of the items failed.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import DataError, TooManyBadItems, VideoDecodeError
from .lists import VideoList
from .sampling import sequence_indices
from .transforms import apply_colour, eval_view, random_colour, random_geometry, to_tensor
from .video import get_reader

MAX_REPLACEMENTS = 10


class VideoDataset(Dataset):
    """``mode``: 'pair' (two random views: a, b), 'single' (one random view), 'eval' (``clips`` fixed clips).

    Items are dicts: ``a``/``b``, uint8 ``(T, 3, S, S)`` views already cropped (and flipped), with
    ``colour_a``/``colour_b``, their ``(5,)`` colour draws, which :func:`finish_views` applies to a whole batch on
    the training device (so workers, shared memory and the host-to-device copy move uint8, a quarter of the
    bytes); or ``clips``, float ``(clips, T, 3, S, S)`` in [0, 1]. Then ``frames_a``/``frames_b`` (the ``(T,)``
    frame indices of each view), ``geometry_a``/``geometry_b`` (where each view's crop lies, ``(6,)``), ``label``,
    ``index`` (of the video actually used) and ``bad`` ('' or 'path<TAB>reason' lines for the videos that
    failed before it).
    """

    def __init__(self, videos: VideoList, mode: str, frames: int, size: int, temporal: str = "segments",
                 stride: int = 1, clips: int = 1, backend: str = "pyav", seed: int = 0, flip: bool = True,
                 strong_aug: bool = True, entries=None, reader=None):
        if mode not in ("pair", "single", "eval"):
            raise ValueError(f"unknown mode {mode!r}")
        self.videos = videos
        self.entries = list(entries) if entries is not None else videos.good
        if not self.entries:
            raise DataError(f"{videos.source or videos.root}: no usable entries")
        self.mode, self.frames, self.size, self.temporal = mode, frames, size, temporal
        self.stride, self.clips, self.seed = stride, clips, seed
        self.backend = backend
        self.reader = reader if reader is not None else get_reader(backend)
        # the smallest random crop keeps 0.59 of the side: at twice the output size no crop is ever upsampled
        self.decode_short_side = 2 * size
        self.flip, self.strong_aug = flip, strong_aug
        self._num_frames: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.entries])

    def _rng(self, epoch: int, index: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, attempt])

    def _load(self, index: int, rng: np.random.Generator) -> dict:
        entry = self.entries[index]
        path = self.videos.full_path(entry)
        n = self._num_frames.get(index)
        if n is None:
            n = self._num_frames[index] = self.reader.info(path).num_frames
        if self.mode == "eval":
            idx = [sequence_indices(n, self.frames, self.stride, self.temporal, None, c, self.clips)
                   for c in range(self.clips)]
            frames = to_tensor(self.reader.read(path, np.concatenate(idx), self.decode_short_side))  # (clips*T, 3, H, W)
            clips = eval_view(frames, self.size).unflatten(0, (self.clips, self.frames))
            return {"clips": clips, "label": entry.label, "index": index}
        views = 2 if self.mode == "pair" else 1
        idx = [sequence_indices(n, self.frames, self.stride, self.temporal, rng) for _ in range(views)]
        frames = to_tensor(self.reader.read(path, np.concatenate(idx), self.decode_short_side))  # (views*T, 3, H, W)
        item = {"label": entry.label, "index": index}
        for v, name in enumerate(("a", "b")[:views]):
            # uint8 views and their colour draws: finish_views applies the colour to whole batches on the device
            item[name], item[f"geometry_{name}"] = random_geometry(frames[v * self.frames:(v + 1) * self.frames],
                                                                  self.size, rng, self.flip)
            item[f"colour_{name}"] = random_colour(rng, self.strong_aug)
            item[f"frames_{name}"] = torch.from_numpy(idx[v])
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a video index, or ``(epoch, index)`` as :class:`~dtgnet.data.samplers.ResumableSampler` yields, so
        persistent DataLoader workers need no epoch update of their copy of the dataset."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        bad = []
        current = index
        for attempt in range(MAX_REPLACEMENTS + 1):
            rng = self._rng(epoch, current, attempt)
            try:
                item = self._load(current, rng)
                item["bad"] = "\n".join(bad)
                return item
            except VideoDecodeError as e:
                bad.append(f"{e.path}\t{e.reason}")
                # a replacement drawn from the item's own seed keeps runs reproducible
                current = int(np.random.default_rng([self.seed, epoch, index, attempt, 7]).integers(len(self)))
        raise TooManyBadItems(f"{MAX_REPLACEMENTS + 1} videos in a row failed to load; last: {bad[-1]}")


def collate_views(items: list[dict]) -> dict:
    """A DataLoader batch of 'pair' or 'single' items: ``views`` uint8 ``(V, B, T, 3, S, S)``, ``colour``
    ``(V, B, 5)``, ``frames`` ``(V, B, T)``, ``geometry`` ``(V, B, 6)`` (each view's crop and flip,
    :data:`~dtgnet.data.transforms.GEOMETRY`), ``label`` and ``index`` ``(B,)``, ``bad`` (B strings).

    Only ``views`` is a tensor, made in shared memory: a worker sends every tensor of a batch as a shared-memory
    segment of its own (created, its descriptor passed, mapped), while numpy arrays travel pickled. With the
    default collation's eight segments per batch, that transfer cost more than reading and cropping the
    frames (docs/PERFORMANCE.md gives ``dtgnet bench`` before and after this change)."""
    names = [name for name in ("a", "b") if name in items[0]]
    views = torch.empty((len(names), len(items), *items[0]["a"].shape), dtype=torch.uint8)  # (V, B, T, 3, S, S)
    if get_worker_info() is not None:
        views.share_memory_()  # before filling: sending it then needs no copy
    for v, name in enumerate(names):
        torch.stack([item[name] for item in items], out=views[v])
    return {"views": views,
            "colour": np.stack([[item[f"colour_{name}"].numpy() for item in items] for name in names]),  # (V, B, 5)
            "frames": np.stack([[item[f"frames_{name}"].numpy() for item in items] for name in names]),  # (V, B, T)
            "geometry": np.stack([[item[f"geometry_{name}"] for item in items] for name in names]),  # (V, B, 6)
            "label": np.array([item["label"] for item in items], dtype=np.int64),
            "index": np.array([item["index"] for item in items], dtype=np.int64),
            "bad": [item["bad"] for item in items]}


def finish_views(raw: dict, device: torch.device, non_blocking: bool = False) -> tuple:
    """A :func:`collate_views` batch's views on ``device``, coloured: ``(a, b or None)`` float ``(B, T, 3, S, S)``."""
    views = raw["views"].to(device, non_blocking=non_blocking)
    colour = torch.from_numpy(raw["colour"])
    out = [apply_colour(views[v], colour[v]) for v in range(len(views))]
    return out[0], (out[1] if len(out) > 1 else None)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``fraction`` of the items of every class (at least one each), fixed by ``seed``."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, zlib.crc32(str(int(c)).encode())])
        k = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))
