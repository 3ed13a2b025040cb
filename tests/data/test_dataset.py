import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from dtgnet.data.dataset import VideoDataset, collate_views, finish_views, stratified_subset
from dtgnet.data.lists import parse_list, read_classes
from dtgnet.data.sampling import clip_indices, tsn_indices
from dtgnet.data.transforms import apply_colour
from dtgnet.errors import TooManyBadItems


def test_tsn_indices_one_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = tsn_indices(40, 4, rng)
        assert all(10 * s <= i < 10 * (s + 1) for s, i in enumerate(idx))
    assert tsn_indices(40, 4).tolist() == [5, 15, 25, 35]
    assert tsn_indices(3, 8).max() <= 2  # short video: indices stay valid


def test_tsn_indices_with_cached_segments_draw_as_computed_afresh():
    for n, segments in [(40, 4), (97, 8), (3, 8), (1000, 16)]:
        edges = np.linspace(0, n, segments + 1)
        rng, fresh = np.random.default_rng(n), np.random.default_rng(n)
        for _ in range(3):
            expect = np.minimum((edges[:-1] + fresh.random(segments) * np.diff(edges)).astype(np.int64), n - 1)
            assert np.array_equal(tsn_indices(n, segments, rng), expect)


def test_clip_indices_stride_and_eval_clips():
    rng = np.random.default_rng(0)
    idx = clip_indices(100, 8, 2, rng)
    assert np.all(np.diff(idx) == 2) and idx[-1] < 100
    starts = [clip_indices(100, 8, 2, None, c, 3)[0] for c in range(3)]
    assert starts == sorted(starts) and len(set(starts)) == 3
    assert clip_indices(5, 8, 2, rng).tolist() == [0, 2, 4, 4, 4, 4, 4, 4]


def test_pair_dataset_items(video_dir, tmp_path):
    videos = parse_list(tmp_path / "good.txt", video_dir, read_classes(tmp_path / "classes.txt"))
    ds = VideoDataset(videos, "pair", frames=3, size=16, seed=1)
    item = ds[0]
    assert item["a"].shape == item["b"].shape == (3, 3, 16, 16)
    assert item["a"].dtype == torch.uint8 and item["colour_a"].shape == (5,)
    a, b = finish_views(collate_views([item]), torch.device("cpu"))
    assert a.shape == b.shape == (1, 3, 3, 16, 16) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a[0], apply_colour(item["a"][None], item["colour_a"][None])[0])
    assert item["bad"] == "" and item["label"] == 0
    again = VideoDataset(videos, "pair", frames=3, size=16, seed=1)[0]
    assert torch.equal(item["a"], again["a"])  # reproducible from the seed
    ev = VideoDataset(videos, "eval", frames=3, size=16, clips=2)[1]
    assert ev["clips"].shape == (2, 3, 3, 16, 16)


@pytest.mark.parametrize("mode", ["pair", "single"])
def test_batches_from_workers_hold_the_items_exactly(video_dir, tmp_path, mode):
    """collate_views packs a batch differently from torch's default collation; what training gets from it
    through worker processes must be the same numbers, bit for bit."""
    videos = parse_list(tmp_path / "good.txt", video_dir, read_classes(tmp_path / "classes.txt"))
    ds = VideoDataset(videos, mode, frames=3, size=16, seed=1)
    names = ("a", "b") if mode == "pair" else ("a",)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_views, drop_last=True)
    batches = 0
    for k, raw in enumerate(loader):
        ref = default_collate([ds[i] for i in range(2 * k, 2 * k + 2)])  # the loader reads in order
        views = finish_views(raw, torch.device("cpu"))
        for v, name in enumerate(names):
            assert torch.equal(views[v], apply_colour(ref[name], ref[f"colour_{name}"]))
            assert np.array_equal(raw["frames"][v], ref[f"frames_{name}"].numpy())
        assert (views[1] is None) == (mode == "single")
        assert raw["label"].tolist() == ref["label"].tolist() and raw["index"].tolist() == ref["index"].tolist()
        assert raw["bad"] == ref["bad"]
        batches += 1
    assert batches == len(ds) // 2 > 0


def test_bad_items_are_replaced_and_reported(video_dir, tmp_path):
    videos = parse_list(tmp_path / "all.txt", video_dir, read_classes(tmp_path / "classes.txt"))
    ds = VideoDataset(videos, "single", frames=3, size=16)
    seen_bad = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["a"].abs().sum() > 0  # never a zero tensor
        for line in filter(None, item["bad"].split("\n")):
            seen_bad.add(line.split("\t")[0].rsplit("/", 1)[1])
    assert {"empty.mp4", "truncated.mp4", "garbage.mp4"} <= seen_bad
    # a missing file is known when the list is loaded (one stat per entry), so the loader never tries it
    assert [e.problem for e in videos.entries if e.path.endswith("missing.mp4")] == ["file not found"]


def test_all_bad_raises(video_dir, tmp_path):
    lst = tmp_path / "allbad.txt"
    lst.write_text("bad/empty.mp4 0\nbad/garbage.mp4 0\n")
    ds = VideoDataset(parse_list(lst, video_dir, ["walk"]), "single", frames=2, size=16)
    with pytest.raises(TooManyBadItems):
        ds[0]


def test_stratified_subset():
    labels = np.repeat(np.arange(5), 20)
    idx = stratified_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[idx]).tolist() == [2] * 5
    assert np.array_equal(idx, stratified_subset(labels, 0.1, seed=0))
    assert len(stratified_subset(labels, 0.01, seed=0)) == 5  # at least one per class


def test_prepared_reader_matches_decoded_frames(tiny_synth, tmp_path):
    from dtgnet.cli import main
    from dtgnet.config import DataConfig
    from dtgnet.data.lists import load_split
    from dtgnet.data.prepare import PreparedReader, reader_for
    from dtgnet.data.video import PyAVReader
    from dtgnet.errors import DataError

    ov = [f"data.root={tiny_synth}", f"data.train_list={tiny_synth / 'train.txt'}",
          f"data.test_list={tiny_synth / 'test.txt'}", "data.size=32"]
    assert main(["data", "prepare", *ov, "--out", str(tmp_path / "prep"), "--size", "32"]) == 0
    cfg = DataConfig(root=str(tiny_synth), train_list=str(tiny_synth / "train.txt"), prepared=str(tmp_path / "prep"))
    reader = reader_for(cfg)
    assert isinstance(reader, PreparedReader)
    entry = load_split(cfg, "train").entries[5]
    path = tiny_synth / entry.path
    assert reader.info(path).num_frames == PyAVReader().info(path).num_frames
    np.testing.assert_array_equal(reader.read(path, [1, 4]), PyAVReader().read(path, [1, 4]))  # same size: no resize
    ds = VideoDataset(load_split(cfg, "train"), "pair", frames=2, size=24, reader=reader)
    assert ds[0]["a"].shape == (2, 3, 24, 24)
    with pytest.raises(DataError, match="not a prepared dataset"):
        PreparedReader(tmp_path, tiny_synth)
    frames = tmp_path / "prep" / "frames.npy"
    os.truncate(frames, 1000)  # a copy cut short (the header and a few rows left): one line naming the file
    with pytest.raises(DataError, match="frames.npy: truncated"):
        PreparedReader(tmp_path / "prep", tiny_synth).read(path, [1, 4])
