import pytest
import torch
import torch.nn.functional as F

from dtgnet.evaluation import classification_scores, knn_accuracy, linear_probe, retrieval_recall


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    tr_x = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    tr_y = torch.arange(30) % 3
    te_x = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    te_y = torch.arange(10) % 3
    return tr_x, tr_y, te_x, te_y


def test_retrieval_matches_loop():
    tr_x, tr_y, te_x, te_y = data()
    res = retrieval_recall(tr_x, tr_y, te_x, te_y, ks=(1, 5, 50))
    for k in (1, 5, 50):
        hits = 0
        for i in range(len(te_y)):
            sims = [(float(te_x[i] @ tr_x[j]), j) for j in range(len(tr_y))]
            top = [j for _, j in sorted(sims, reverse=True)[:k]]
            hits += any(int(tr_y[j]) == int(te_y[i]) for j in top)
        assert res[f"R@{k}"] == pytest.approx(hits / len(te_y))
    assert res["R@50"] == 1.0


def test_knn_matches_loop():
    tr_x, tr_y, te_x, te_y = data(1)
    k, t = 5, 0.07
    correct = 0
    for i in range(len(te_y)):
        sims = sorted(((float(te_x[i] @ tr_x[j]), j) for j in range(len(tr_y))), reverse=True)[:k]
        votes = {}
        for s, j in sims:
            votes[int(tr_y[j])] = votes.get(int(tr_y[j]), 0.0) + torch.exp(torch.tensor(s / t)).item()
        correct += max(votes, key=votes.get) == int(te_y[i])
    assert knn_accuracy(tr_x, tr_y, te_x, te_y, k=k, temperature=t) == pytest.approx(correct / len(te_y))
    assert knn_accuracy(tr_x, tr_y, tr_x, tr_y, k=1) == 1.0


def test_classification_scores_clip_and_video_level():
    logits = torch.tensor([[[3.0, 0.0], [0.0, 1.0]],   # clips disagree; mean softmax says class 0
                           [[0.0, 2.0], [0.0, 2.0]]])
    res = classification_scores(logits, torch.tensor([0, 1]))
    assert res["clip_top1"] == pytest.approx(0.75) and res["video_top1"] == 1.0


def test_linear_probe_separable():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] > 0).long()
    assert linear_probe(x[:40], y[:40], x[40:], y[40:]) >= 0.9


@pytest.fixture(scope="module")
def ucf_like(tiny_synth, tmp_path_factory):
    """A UCF101-shaped copy of the tiny set (classInd.txt, three trainlist/testlist pairs over the same videos)
    and a briefly pre-trained student."""
    import shutil

    from dtgnet.training import train
    from tests.conftest import tiny_cfg

    root = tmp_path_factory.mktemp("ucf")
    classes = (tiny_synth / "classes.txt").read_text().split()
    (root / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    videos = []
    lines = (tiny_synth / "train.txt").read_text().splitlines() + (tiny_synth / "test.txt").read_text().splitlines()
    for line in lines:
        rel, label = line.split()
        name = f"{classes[int(label)]}/v_{len(videos):03d}.mp4"
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy(tiny_synth / rel, root / name)
        videos.append((name, int(label)))
    for split in (1, 2, 3):
        test = [v for i, v in enumerate(videos) if i % 3 == split - 1]
        train_lines = [f"{n} {k + 1}\n" for n, k in videos if (n, k) not in test]
        (root / f"trainlist0{split}.txt").write_text("".join(train_lines))
        (root / f"testlist0{split}.txt").write_text("".join(f"{n}\n" for n, _ in test))
    cfg = tiny_cfg(tiny_synth, root / "run")
    cfg.teachers = []
    train(cfg, "pretrain", progress=False)
    return root, len(videos), root / "run" / "student.safetensors"


def test_three_split_mean_extracts_every_video_once(ucf_like, monkeypatch):
    """--split all on UCF101: one extraction over the videos the splits share, the same scores as evaluating
    each split on its own, and their mean."""
    import dtgnet.evaluation as evaluation
    from dtgnet.config import load_config
    from dtgnet.students import load_student

    root, n_videos, ckpt = ucf_like
    cfg = load_config(None, [f"data.root={root}", "data.format=ucf101", f"data.classes={root}/classInd.txt",
                             f"data.train_list={root}/trainlist01.txt", f"data.test_list={root}/testlist01.txt",
                             "data.frames=2", "data.size=32", "data.eval_clips=2", "run.out=unused"])
    extracted = []
    real = evaluation.extract
    monkeypatch.setattr(evaluation, "extract", lambda model, dataset, *a, **kw: extracted.append(len(dataset))
                        or real(model, dataset, *a, **kw))
    for protocol in ("knn", "retrieval"):
        extracted.clear()
        res = evaluation.evaluate_checkpoints([str(ckpt)], cfg, protocol, [1, 2, 3], progress=False)
        assert extracted == [n_videos]  # not 2 x 3 passes over train and test lists
        for split in (1, 2, 3):
            alone = evaluation.evaluate_model(load_student(ckpt), evaluation.split_config(cfg, split), protocol)
            for key, value in res["splits"][split].items():
                assert value == pytest.approx(alone[key], abs=1e-6), (protocol, split, key)
        for key, value in res["mean"].items():
            assert value == pytest.approx(sum(res["splits"][s][key] for s in (1, 2, 3)) / 3)
