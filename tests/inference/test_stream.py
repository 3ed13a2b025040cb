"""The streaming pass: windows that cover a video, clips cut as `eval` cuts them, frames held only while a clip
still needs them, and a decoder that stops making progress turned into a reason."""
from __future__ import annotations

import time

import numpy as np
import pytest

from dtgnet.data.bulk import Decode, loader
from dtgnet.data.sampling import sequence_indices
from dtgnet.data.video import PyAVReader, stall_limited
from dtgnet.errors import VideoDecodeError
from dtgnet.inference.inputs import resolve_inputs
from dtgnet.inference.stream import _Assembly, plan_clips, window_spans


@pytest.mark.parametrize("frames, fps, window, stride, expected", [
    (100, 10, 2, 2, [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]),
    (95, 10, 2, 2, [(0, 20), (20, 40), (40, 60), (60, 80), (75, 95)]),  # the last window ends at the end
    (50, 10, 2, 1, [(0, 20), (10, 30), (20, 40), (30, 50)]),
    (12, 10, 2, 1, [(0, 12)]),  # shorter than a window: one window
])
def test_windows_cover_the_video(frames, fps, window, stride, expected):
    assert window_spans(frames, fps, window, stride) == expected


def test_video_level_clips_are_evals_and_windows_sample_inside_themselves():
    plan = plan_clips(0, "v.mp4", 300, 30.0, 8, 1, "segments", clips=3)
    assert plan.rows == [0, 0, 0] and plan.spans == [(0.0, 10.0)]
    for c in range(3):
        assert plan.clips[c].tolist() == sequence_indices(300, 8, 1, "segments", None, c, 3).tolist()
    plan = plan_clips(0, "v.mp4", 300, 30.0, 4, 2, "clip", clips=3, window=2.0, window_stride=1.0)
    assert len(plan.spans) == 9 and plan.rows == list(range(9))
    for (lo, hi), idx in zip(plan.spans, plan.clips):
        assert lo * 30 <= idx.min() and idx.max() < hi * 30 and np.all(np.diff(idx) == 2)
    with pytest.raises(ValueError, match="no frame rate"):
        plan_clips(0, "frames", 300, 0.0, 8, 1, "segments", clips=1, window=2.0)


def test_frames_are_held_only_while_a_clip_needs_them():
    """An hour at 25 fps in 2-s windows: frames arrive in chunks, and the assembly holds at most a window's."""
    plan = plan_clips(0, "long.mp4", 90_000, 25.0, 8, 1, "segments", clips=1, window=2.0)
    a = _Assembly(plan, thumbs=False)
    needed, most, clips = plan.needed(), 0, 0
    frame = np.zeros((1, 1, 3), np.uint8)
    for start in range(0, len(needed), 32):
        idx = needed[start:start + 32]
        clips += len(a.add(idx, [frame] * len(idx)))
        most = max(most, len(a.frames))
    assert clips == len(plan.spans) == 1800 and most <= 32 + 8


def test_a_stalled_decoder_becomes_a_reason():
    def stuck():
        yield 1
        time.sleep(30)  # a decoder that makes no progress
        yield 2

    items = stall_limited(stuck(), 0.3, "stuck.mp4")
    assert next(items) == 1
    started = time.monotonic()
    with pytest.raises(VideoDecodeError, match="stuck.mp4: decoding made no progress for 0.3 s"):
        next(items)
    assert time.monotonic() - started < 2


def test_time_between_items_is_not_counted():
    items = stall_limited(iter(range(3)), 0.2, "v.mp4")
    out = []
    for i in items:
        time.sleep(0.3)  # the caller's work (a forward pass) between frames
        out.append(i)
    assert out == [0, 1, 2]


class StallingReader(PyAVReader):
    """PyAV, but the second video's decoder stops making progress half-way."""

    def iter_square(self, path, sizes, keep=None):
        for n, item in enumerate(super().iter_square(path, sizes, keep)):
            if "stall" in str(path) and n == 3:
                time.sleep(60)
            yield item


@pytest.mark.parametrize("workers", [0, 1])
def test_the_bulk_decoder_gives_up_a_stalled_file_and_goes_on(video_dir, workers):
    import shutil

    shutil.copy(video_dir / "walk" / "walk0.mp4", video_dir / "stall.mp4")
    jobs = [(0, video_dir / "walk" / "walk1.mp4", range(8)), (1, video_dir / "stall.mp4", range(8)),
            (2, video_dir / "run" / "run0.mp4", range(8))]
    started = time.monotonic()
    done = {n: reason for n, pos, _, reason in loader(Decode(jobs, StallingReader(), [16], timeout=0.5), workers)
            if pos < 0}
    assert time.monotonic() - started < 20
    assert done[0] == "" and done[2] == "" and "no progress for 0.5 s" in done[1]


def test_inputs_from_files_folders_and_lists(video_dir, tmp_path):
    listed = tmp_path / "some.txt"
    listed.write_text("walk/walk0.mp4 0\n\n# a comment\nrun/run1.mp4\n")
    got = resolve_inputs([str(video_dir / "run"), str(listed), str(video_dir / "run" / "run0.mp4")], str(video_dir))
    assert [p.name for p in got] == ["run0.mp4", "run1.mp4", "walk0.mp4"]  # each once, in the order named
