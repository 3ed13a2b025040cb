"""Teacher-feature cache: every frame of every training video embedded once by each frozen teacher.

Training then looks up ``mean_t cache[video, frame_t]`` for a view instead of running the teachers on it,
which removes the teachers' cost from every step. Cached teachers see the clean frame (short side resized
to the teacher's input size, centre crop), not the student's augmented view. Embeddings are held in memory as
float16, ``frames x D x 2`` bytes per video and teacher.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from .data.dataset import VideoDataset
from .data.transforms import to_tensor
from .errors import VideoDecodeError
from .teachers import Teacher


class TeacherCache:
    def __init__(self, per_video: list[torch.Tensor | None], embed_dim: int):
        self.per_video = per_video  # video index -> (frames, D) float16, None if it could not be read
        self.embed_dim = embed_dim

    def lookup(self, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``index`` ``(B,)`` video indices, ``frames`` ``(B, T)`` frame indices -> ``(B, D)`` float32."""
        rows = []
        for i, f in zip(index.tolist(), frames):
            feats = self.per_video[i]
            if feats is None:
                raise VideoDecodeError(f"video #{i}", "not in the teacher cache (unreadable when it was built)")
            rows.append(feats[f.clamp_max(len(feats) - 1)].float().mean(0))
        return torch.stack(rows)  # (B, D)


@torch.no_grad()
def build_cache(teacher: Teacher, dataset: VideoDataset, device, batch_frames: int = 256,
                progress: bool = True) -> TeacherCache:
    from tqdm import tqdm

    resize = v2.Compose([v2.Resize(teacher.input_size, antialias=True), v2.CenterCrop(teacher.input_size),
                         v2.ToDtype(torch.float32, scale=True)])
    per_video: list[torch.Tensor | None] = []
    for i in tqdm(range(len(dataset)), desc=f"teacher cache {teacher.name}", disable=not progress, unit="video"):
        path = dataset.videos.full_path(dataset.entries[i])
        try:
            n = dataset.reader.info(path).num_frames
            frames = resize(to_tensor(dataset.reader.read(path, range(n))))  # (n, 3, S, S)
        except VideoDecodeError:
            per_video.append(None)
            continue
        feats = [teacher.embed_frames(frames[j:j + batch_frames].to(device)).half().cpu()
                 for j in range(0, n, batch_frames)]
        per_video.append(torch.cat(feats))
    return TeacherCache(per_video, teacher.embed_dim)
