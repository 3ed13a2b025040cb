
import pytest

from dtgnet.config import DataConfig
from dtgnet.data.lists import (
    MISSING,
    load_split,
    parse_folders,
    parse_hmdb51,
    parse_kinetics,
    parse_list,
    parse_ucf101,
    read_classes,
)
from dtgnet.errors import DataError
from tests.conftest import UCF_SPLITS

ucf = pytest.mark.skipif(not UCF_SPLITS.is_dir(), reason="shared UCF101 split lists not present")


@ucf
@pytest.mark.parametrize("split, n_train, n_test", [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)])
def test_ucf101_official_splits(tmp_path, split, n_train, n_test):
    cls = UCF_SPLITS / "classInd.txt"
    train = parse_ucf101(UCF_SPLITS / f"trainlist0{split}.txt", tmp_path, cls)
    test = parse_ucf101(UCF_SPLITS / f"testlist0{split}.txt", tmp_path, cls)
    assert len(train.classes) == 101
    assert (len(train), len(test)) == (n_train, n_test)
    # the videos are not here (tmp_path is empty): every entry parses and is flagged missing, nothing else
    assert {e.problem for e in train.entries + test.entries} == {MISSING}
    assert {e.label for e in test.entries} == set(range(101))
    first = train.entries[0]
    assert first.path.startswith("ApplyEyeMakeup/v_ApplyEyeMakeup_g") and first.label == 0


@ucf
def test_ucf101_through_data_config(tmp_path):
    cfg = DataConfig(format="ucf101", root=str(tmp_path), classes=str(UCF_SPLITS / "classInd.txt"),
                     train_list=str(UCF_SPLITS / "trainlist01.txt"), test_list=str(UCF_SPLITS / "testlist01.txt"))
    assert len(load_split(cfg, "train")) == 9537 and len(load_split(cfg, "test")) == 3783


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 1 \ne.avi 1\nf.avi 2\n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 2\n")
    train = parse_hmdb51(splits, tmp_path, 1, "train")
    test = parse_hmdb51(splits, tmp_path, 1, "test")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert [(e.path, e.label) for e in train.entries] == [("brush_hair/a.avi", 0), ("cartwheel/d.avi", 1),
                                                          ("cartwheel/e.avi", 1)]
    assert [e.path for e in test.entries] == ["brush_hair/b.avi", "cartwheel/f.avi"]
    (splits / "bad_test_split1.txt").write_text("x.avi 5\n")
    with pytest.raises(DataError, match="bad_test_split1.txt:1"):
        parse_hmdb51(splits, tmp_path, 1, "train")


def test_kinetics_csv(tmp_path):
    (tmp_path / "abseiling").mkdir()
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "abseiling,abc,10,20,train\nair drumming,xyz,0,10,train\n")
    v = parse_kinetics(csv, tmp_path)
    assert v.classes == ["abseiling", "air drumming"]
    assert v.entries[0].path == "abseiling/abc_000010_000020.mp4"
    assert v.entries[1].path == "xyz_000000_000010.mp4" and v.entries[1].label == 1
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="header"):
        parse_kinetics(tmp_path / "bad.csv", tmp_path)


def test_generic_list_labels_and_problems(video_dir, tmp_path):
    classes = read_classes(tmp_path / "classes.txt")
    v = parse_list(tmp_path / "all.txt", video_dir, classes)
    problems = {e.path: e.problem for e in v.entries if e.problem}
    assert "unknown label 7" in problems["walk/walk0.mp4"]
    assert "escapes" in problems["../outside.mp4"]
    assert problems["bad/missing.mp4"] == MISSING  # known at load: one stat per entry
    assert len(v.good) == 7
    named = tmp_path / "named.txt"
    named.write_text("walk/walk0.mp4 walk\nrun/run0.mp4 run\nrun/run1.mp4 swim\n")
    v = parse_list(named, video_dir, classes)
    assert [e.label for e in v.entries[:2]] == [0, 1] and "unknown label 'swim'" in v.entries[2].problem


def test_absolute_path_is_refused(video_dir, tmp_path):
    lst = tmp_path / "abs.txt"
    lst.write_text(f"{video_dir / 'walk' / 'walk0.mp4'} 0\n")
    assert "absolute" in parse_list(lst, video_dir, ["walk"]).entries[0].problem


def test_class_folders_and_frame_folders(video_dir, tmp_path):
    v = parse_folders(video_dir)
    assert v.classes == ["bad", "run", "walk"] and len([e for e in v.entries if e.label == 2]) == 2
    frames = tmp_path / "frames"
    for c in ("a", "b"):
        (frames / c / "clip1").mkdir(parents=True)
    f = parse_folders(frames, frames=True)
    assert [e.path for e in f.entries] == ["a/clip1", "b/clip1"]
    cfg = DataConfig(format="frames", root=str(frames), train_list=str(frames))
    assert len(load_split(cfg, "train")) == 2


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        parse_list(tmp_path / "nope.txt", tmp_path)
