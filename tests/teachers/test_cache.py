import numpy as np
import torch

from dtgnet.config import TeacherConfig
from dtgnet.data.bulk import Video
from dtgnet.teachers import build_teacher, callable_teacher
from dtgnet.teachers.cache import BATCH_FRAMES, _Embedder, teacher_batch


def test_cpu_batches_shrink_with_the_input_size():
    sized = {s: callable_teacher(f"t{s}", lambda x: x.mean((2, 3)), s, 3) for s in (64, 112, 224, 1024)}
    assert [teacher_batch(sized[s], "cpu") for s in (64, 112, 224, 1024)] == [48, 16, 4, 1]
    assert teacher_batch(sized[64], "cuda") == BATCH_FRAMES


def test_embeddings_do_not_depend_on_how_frames_are_batched():
    """The cache runs the teacher on small CPU batches gathered across chunks: every embedding must be the
    one a single batch of all frames gives."""
    teacher = build_teacher(TeacherConfig("imagenet", "efficientnet_lite0", input_size=64))
    frames = np.random.default_rng(0).integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)
    written = {}
    embedder = _Embedder([teacher], "cpu", lambda k, row, emb: written.__setitem__(row, emb))
    video = Video("v.mp4", 100, 25.0, 1, 0)
    embedder.add(video, 0, [frames[:60]])
    embedder.add(video, 60, [frames[60:]])
    embedder.flush()
    whole = teacher.embed_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)).half().numpy()
    assert sorted(written) == [0, 60]
    assert np.array_equal(np.concatenate([written[0], written[60]]), whole)
