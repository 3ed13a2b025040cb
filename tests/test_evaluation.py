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


def test_cnn_tokens_pool_to_the_feature_and_vit_tokens_cover_the_tubelets():
    from dtgnet.students import DTGStudent

    for arch, frames, size in (("tsn_r18", 3, 64), ("r3d_18", 4, 32), ("swin3d_t", 4, 32)):
        m = DTGStudent(arch, frames, {}, size=size).eval()
        x = torch.rand(2, frames, 3, size, size)
        with torch.no_grad():
            tokens = m.backbone.tokens(x)  # (B, N, D)
            torch.testing.assert_close(tokens.mean(1), m.features(x), atol=1e-5, rtol=1e-4)  # average pooling
        assert tokens.shape[0] == 2 and tokens.shape[2] == m.backbone.feature_dim and tokens.shape[1] > 1
    vit = DTGStudent("vit_t", 4, {}, size=32, patch_size=8).eval()
    with torch.no_grad():
        assert vit.backbone.tokens(torch.rand(1, 4, 3, 32, 32)).shape == (1, 2 * 4 * 4, 192)  # 2x4x4 tubelets


def test_attentive_probe_trains_and_scores_videos_from_their_clips():
    """Three classes whose tokens scatter around a centre each; two clips per video, scored together."""
    from dtgnet.evaluation import attentive_probe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g)

    def videos(n):
        labels = torch.arange(n) % 3
        tokens = torch.randn(n, 2, 16, 8, generator=g) + centres[labels][:, None, None]  # (N, clips, tokens, D)
        return {"tokens": tokens.half(), "labels": labels}

    train, test = videos(96), videos(48)
    assert attentive_probe(train, test, seed=0) == 1.0
    shuffled = {"tokens": train["tokens"], "labels": train["labels"][torch.randperm(96, generator=g)]}
    assert attentive_probe(shuffled, test, seed=0) < 0.7  # labels it cannot learn: near chance (1/3)


def test_attentive_protocol_on_a_tiny_set(colours, colour_student):
    from dtgnet.evaluation import evaluate_model
    from dtgnet.students import checkpoint_config, load_student

    res = evaluate_model(load_student(colour_student), checkpoint_config(colour_student), "attentive")
    assert set(res) == {"top1"} and res["top1"] >= 5 / 6  # red and blue scenes, 6 test videos
