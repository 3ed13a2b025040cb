import numpy as np
import pytest

from dtgnet.data.video import FrameFolderReader, PyAVReader, available_backends, get_reader, rotate_frame
from dtgnet.errors import ConfigError, VideoDecodeError
from tests.conftest import REAL_CLIPS, moving_square

real = pytest.mark.skipif(not REAL_CLIPS.is_dir(), reason="shared real clips not present")


@real
@pytest.mark.parametrize("name, size, fps", [
    ("typing40.mp4", (1280, 720), 25.0),
    ("typing44.mp4", (640, 360), 8100 / 323),  # variable frame rate: average != nominal 25
    ("doing_exercises4.mp4", (1080, 1350), 30.0),  # portrait
])
def test_pyav_real_clips_info(name, size, fps):
    info = PyAVReader().info(REAL_CLIPS / name)
    assert (info.width, info.height) == size
    assert info.fps == pytest.approx(fps, rel=1e-3)
    assert info.num_frames > 200


@real
def test_pyav_random_access_matches_sequential_order():
    r = PyAVReader()
    path = REAL_CLIPS / "typing44.mp4"
    n = r.info(path).num_frames
    every = r.read(path, list(range(0, 40)))
    picked = r.read(path, [30, 3, 3, 17])
    assert picked.shape == (4, 360, 640, 3) and picked.dtype == np.uint8
    np.testing.assert_array_equal(picked[0], every[30])
    np.testing.assert_array_equal(picked[1], every[3])
    np.testing.assert_array_equal(picked[3], every[17])
    last = r.read(path, [n - 1])
    assert last.shape[0] == 1
    with pytest.raises(VideoDecodeError, match="truncated"):
        r.read(path, [n + 5])


@real
def test_portrait_clip_is_returned_portrait():
    frames = PyAVReader().read(REAL_CLIPS / "doing_exercises13.mp4", [0])
    assert frames.shape[1:] == (1350, 1080, 3)


def test_rotation_metadata_is_applied():
    f = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint8)
    assert rotate_frame(f, 90).shape == (3, 2, 3)
    np.testing.assert_array_equal(rotate_frame(f, 90), np.rot90(f))
    np.testing.assert_array_equal(rotate_frame(f, -90), np.rot90(f, 3))
    assert rotate_frame(f, 0) is f


def test_written_video_roundtrip(tmp_path):
    from dtgnet.data.synth import write_mp4

    frames = moving_square()
    write_mp4(tmp_path / "v.mp4", frames)
    r = PyAVReader()
    assert r.info(tmp_path / "v.mp4").num_frames == len(frames)
    got = r.read(tmp_path / "v.mp4", list(range(len(frames))))
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 8  # lossy H.264, same picture


def test_bad_files_raise_typed_errors(video_dir):
    r = PyAVReader()
    for name, reason in [("empty.mp4", "empty"), ("garbage.mp4", "cannot open"), ("missing.mp4", "not found")]:
        with pytest.raises(VideoDecodeError, match=reason) as e:
            r.info(video_dir / "bad" / name)
        assert e.value.path.endswith(name)
    with pytest.raises(VideoDecodeError):
        r.read(video_dir / "bad" / "truncated.mp4", [7])


def test_frame_folder_reader(tmp_path):
    from PIL import Image

    frames = moving_square()
    d = tmp_path / "clip"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"img_{i + 1:05d}.png")
    r = FrameFolderReader()
    assert r.info(d).num_frames == 8
    np.testing.assert_array_equal(r.read(d, [2, 5]), frames[[2, 5]])
    with pytest.raises(VideoDecodeError):
        r.read(d, [9])


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_optional_backends(backend, tmp_path):
    from dtgnet.data.synth import write_mp4

    if backend not in available_backends():
        with pytest.raises(ConfigError, match="not installed"):
            get_reader(backend)
        return
    frames = moving_square()
    write_mp4(tmp_path / "v.mp4", frames)
    r = get_reader(backend)
    ref = PyAVReader().read(tmp_path / "v.mp4", [1, 6])
    got = r.read(tmp_path / "v.mp4", [1, 6])
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3


@real
@pytest.mark.parametrize("name", ["typing44.mp4", "doing_exercises4.mp4"])
def test_seeking_read_equals_full_sequential_decode(name):
    import av

    path = REAL_CLIPS / name
    with av.open(str(path)) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    r = PyAVReader()
    n = r.info(path).num_frames
    assert n == len(every)
    picks = [n - 1, n // 2, n - 37, 150]
    got = r.read(path, picks)
    for k, i in enumerate(picks):
        np.testing.assert_array_equal(got[k], every[i])
