"""Teacher-feature cache: every frame of every training video embedded once by each frozen teacher.

Training then looks up ``mean_t cache[video, frame_t]`` for a view instead of running the teachers on it,
which removes the teachers' cost from every step. Cached teachers see the clean frame (short side resized
to the teacher's input size, centre crop), not the student's augmented view.

In memory (``run.teacher_cache=true``) the cache is built when a run starts. On disk
(`dtgnet teacher cache -c CONFIG`, then ``run.teacher_cache_dir``) it is one float16 ``.npy`` per teacher,
memory-mapped, plus ``index.json``: the video order, each video's frame offset and count, and a key made of
the teacher's identity (source, weights, a hash of its parameters), its preprocessing, and every video's
path, size and modification time. A cache whose key no longer matches is refused, naming what changed.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from .data.dataset import VideoDataset
from .data.transforms import to_tensor
from .errors import DtgError, VideoDecodeError
from .storage import reserved_file, write_text_atomic
from .teachers import Teacher

PREPROCESSING = "resize-short-side,center-crop,float[0,1],teacher-normalisation/1"


class StaleCacheError(DtgError):
    pass


class TeacherCache:
    """``per_video[i]``: ``(frames_i, D)`` float16 embeddings of video ``i`` (None if it was unreadable)."""

    def __init__(self, per_video: list, embed_dim: int):
        self.per_video = per_video
        self.embed_dim = embed_dim

    def lookup(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``index`` ``(B,)`` video indices, ``frames`` ``(B, T)`` frame indices -> ``(B, D)`` float32."""
        rows = []
        for i, f in zip(index.tolist(), frames.numpy()):
            feats = self.per_video[i]
            if feats is None:
                raise VideoDecodeError(f"video #{i}", "not in the teacher cache (unreadable when it was built)")
            rows.append(torch.from_numpy(np.asarray(feats[np.minimum(f, len(feats) - 1)], dtype=np.float32)).mean(0))
        return torch.stack(rows)  # (B, D)


def _frames_resize(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)])


@torch.no_grad()
def embed_videos(teacher: Teacher, dataset: VideoDataset, device, batch_frames: int = 256,
                 progress: bool = True) -> list[np.ndarray | None]:
    """Every frame of every video of ``dataset`` through ``teacher``: a list of ``(frames, D)`` float16."""
    from tqdm import tqdm

    resize = _frames_resize(teacher.input_size)
    out: list[np.ndarray | None] = []
    for i in tqdm(range(len(dataset)), desc=f"teacher cache {teacher.name}", disable=not progress, unit="video"):
        path = dataset.videos.full_path(dataset.entries[i])
        try:
            n = dataset.reader.info(path).num_frames
            frames = resize(to_tensor(dataset.reader.read(path, range(n))))  # (n, 3, S, S)
        except VideoDecodeError:
            out.append(None)
            continue
        feats = [teacher.embed_frames(frames[j:j + batch_frames].to(device)).half().cpu()
                 for j in range(0, n, batch_frames)]
        out.append(torch.cat(feats).numpy())
    return out


def build_cache(teacher: Teacher, dataset: VideoDataset, device, progress: bool = True) -> TeacherCache:
    """In-memory cache for one run."""
    return TeacherCache(embed_videos(teacher, dataset, device, progress=progress), teacher.embed_dim)


# ------------------------------------------------------------------------------------------ on disk

def teacher_fingerprint(teacher: Teacher, teacher_cfg) -> dict:
    """What the embeddings depend on: source, weights, parameter hash, input size, normalisation."""
    h = hashlib.sha256()
    state = teacher.encoder.state_dict() if hasattr(teacher.encoder, "state_dict") else {}
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    if teacher_cfg.source == "onnx":
        h.update(Path(teacher_cfg.weights).read_bytes())
    return {"name": teacher_cfg.name, "source": teacher_cfg.source, "weights": teacher_cfg.weights,
            "params_sha256": h.hexdigest()[:32], "input_size": teacher.input_size,
            "mean": teacher.mean.flatten().tolist(), "std": teacher.std.flatten().tolist(),
            "preprocessing": PREPROCESSING}


def data_fingerprint(dataset: VideoDataset) -> list[list]:
    """Per video: relative path, byte size, modification time (ns)."""
    rows = []
    for e in dataset.entries:
        p = dataset.videos.full_path(e)
        st = p.stat() if p.exists() else None
        rows.append([e.path, st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return rows


def write_cache(teacher: Teacher, teacher_cfg, dataset: VideoDataset, out_dir, device, progress: bool = True) -> Path:
    """Embed every frame and write ``<name>.npy`` + ``<name>.json`` under ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_video = embed_videos(teacher, dataset, device, progress=progress)
    counts = [0 if f is None else len(f) for f in per_video]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    arr = np.concatenate([f for f in per_video if f is not None]) if any(counts) else \
        np.zeros((0, teacher.embed_dim), np.float16)
    npy, meta = out_dir / f"{teacher_cfg.name}.npy", out_dir / f"{teacher_cfg.name}.json"
    meta.unlink(missing_ok=True)  # an older index never describes the new embeddings
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
    with reserved_file(npy, len(header.getvalue()) + arr.nbytes) as fh:
        fh.write(header.getvalue())
        fh.write(np.ascontiguousarray(arr).tobytes())
    index = {"teacher": teacher_fingerprint(teacher, teacher_cfg), "data": data_fingerprint(dataset),
             "offsets": offsets, "counts": counts, "embed_dim": teacher.embed_dim}
    write_text_atomic(meta, json.dumps(index))
    return npy


def load_cache(teacher: Teacher, teacher_cfg, dataset: VideoDataset, cache_dir) -> TeacherCache:
    """Memory-map a cache written by :func:`write_cache`; refuse it if the teacher or the data changed."""
    cache_dir = Path(cache_dir)
    meta_path, npy = cache_dir / f"{teacher_cfg.name}.json", cache_dir / f"{teacher_cfg.name}.npy"
    if not meta_path.is_file() or not npy.is_file():
        raise StaleCacheError(f"{cache_dir}: no cache for teacher {teacher_cfg.name!r}; "
                              f"write it with `dtgnet teacher cache -c CONFIG`")
    index = json.loads(meta_path.read_text())
    want = teacher_fingerprint(teacher, teacher_cfg)
    changed = [k for k in want if index["teacher"].get(k) != want[k]]
    if changed:
        raise StaleCacheError(f"{meta_path}: stale teacher cache, the teacher's {', '.join(changed)} changed; "
                              f"rebuild it with `dtgnet teacher cache -c CONFIG`")
    rows = {path: (size, mtime, off, count) for (path, size, mtime), off, count
            in zip(index["data"], index["offsets"], index["counts"])}
    arr = np.load(npy, mmap_mode="r")
    per_video = []
    for path, size, mtime in data_fingerprint(dataset):  # by path: a run may train on a subset of the videos
        if path not in rows:
            raise StaleCacheError(f"{meta_path}: stale teacher cache, {path} is not in it; "
                                  f"rebuild it with `dtgnet teacher cache -c CONFIG`")
        c_size, c_mtime, off, count = rows[path]
        if (c_size, c_mtime) != (size, mtime):
            raise StaleCacheError(f"{meta_path}: stale teacher cache, {path} changed (size or modification "
                                  f"time); rebuild it with `dtgnet teacher cache -c CONFIG`")
        per_video.append(arr[off:off + count] if count else None)
    return TeacherCache(per_video, index["embed_dim"])
