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
