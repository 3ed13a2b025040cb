"""Evaluation of one checkpoint: fine-tune top-1 (clip and video level), linear probe, attentive probe, kNN,
retrieval.

Video-level scores average the softmax over ``data.eval_clips`` deterministic clips; video-level features are
the mean of the clips' backbone features, L2-normalised.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data.dataset import VideoDataset
from .data.lists import load_split
from .data.prepare import reader_for
from .errors import CheckpointError, DataError
from .students import DTGStudent, load_student

PROTOCOLS = ("finetune", "linear", "attentive", "knn", "retrieval")
PROBE_EPOCHS, PROBE_MIN_STEPS, PROBE_LR, PROBE_WD, PROBE_BATCH = 20, 300, 1e-3, 0.05, 32
RECALL_KS = (1, 5, 10, 20, 50)


def _eval_batches(dataset: VideoDataset, batch_size: int, progress: bool, desc: str):
    """``(clips (B, C, T, 3, S, S), labels (B,))`` in dataset order; an unreadable video stops evaluation."""
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for raw in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        if any(raw["bad"]):
            bad = [b for b in raw["bad"] if b][0].split("\n")[0]
            raise DataError(f"evaluation video unreadable: {bad.replace(chr(9), ': ')}")
        yield raw["clips"], raw["label"]


@torch.no_grad()
def extract(model: DTGStudent, dataset: VideoDataset, device, batch_size: int = 16,
            progress: bool = False, desc: str = "features") -> dict:
    """Backbone features ``(N, clips, D)``, classifier logits ``(N, clips, K)`` (or None), labels ``(N,)``."""
    model.eval()
    feats, logits, labels = [], [], []
    for clips, label in _eval_batches(dataset, batch_size, progress, desc):
        clips = clips.to(device)  # (B, C, T, 3, S, S)
        b, c = clips.shape[:2]
        f = model.features(clips.flatten(0, 1)).float()  # (B*C, D)
        feats.append(f.unflatten(0, (b, c)).cpu())
        if model.classifier is not None:
            logits.append(model.classifier(f).float().unflatten(0, (b, c)).cpu())
        labels.append(label)
    return {"feats": torch.cat(feats), "logits": torch.cat(logits) if logits else None,
            "labels": torch.cat(labels)}


@torch.no_grad()
def extract_teacher(teacher, dataset: VideoDataset, device, batch_size: int = 16, progress: bool = False,
                    desc: str = "teacher features") -> dict:
    """A frozen teacher's features ``(N, clips, D)`` (each clip: mean over its frames' embeddings) and labels,
    in the shape of :func:`extract`'s output, so :func:`frozen_feature_scores` takes them."""
    feats, labels = [], []
    for clips, label in _eval_batches(dataset, batch_size, progress, desc):
        b, c = clips.shape[:2]
        feats.append(teacher(clips.flatten(0, 1).to(device)).unflatten(0, (b, c)).cpu())  # (B, C, D)
        labels.append(label)
    return {"feats": torch.cat(feats), "logits": None, "labels": torch.cat(labels)}


def classification_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """``logits`` ``(N, C, K)``: clip-level top-1 (every clip on its own) and video-level top-1 (mean softmax)."""
    n, c, _ = logits.shape
    clip_top1 = (logits.argmax(-1) == labels[:, None]).float().mean().item()
    video_pred = logits.softmax(-1).mean(1).argmax(-1)  # (N,)
    return {"clip_top1": clip_top1, "video_top1": (video_pred == labels).float().mean().item(),
            "predictions": video_pred.tolist()}


def video_embeddings(feats: torch.Tensor) -> torch.Tensor:
    """``(N, C, D)`` -> ``(N, D)`` unit vectors."""
    return F.normalize(feats.mean(1), dim=1)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN (Wu et al., 2018): each of the k nearest training videos (cosine) votes
    ``exp(sim / temperature)`` for its class."""
    k = min(k, len(train_y))
    sim = test_x @ train_x.T  # (Nq, Nt)
    top, idx = sim.topk(k, dim=1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_y), num_classes)
    votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
    return (votes.argmax(1) == test_y).float().mean().item()


def retrieval_recall(train_x, train_y, test_x, test_y, ks=RECALL_KS) -> dict:
    """Test videos query training videos; R@k = share of queries with a same-class video among the top k."""
    sim = test_x @ train_x.T  # (Nq, Nt)
    order = sim.argsort(dim=1, descending=True)
    hits = train_y[order] == test_y[:, None]  # (Nq, Nt)
    return {f"R@{k}": hits[:, :min(k, hits.shape[1])].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def extract_tokens(model: DTGStudent, dataset: VideoDataset, device, batch_size: int = 8, progress: bool = False,
                   desc: str = "tokens") -> dict:
    """The frozen backbone's last tokens of every clip, ``(N, clips, n_tokens, D)`` float16, and labels ``(N,)``."""
    model.eval()
    tokens, labels = [], []
    for clips, label in _eval_batches(dataset, batch_size, progress, desc):
        b, c = clips.shape[:2]
        t = model.backbone.tokens(clips.flatten(0, 1).to(device))  # (B*C, n_tokens, D)
        tokens.append(t.half().unflatten(0, (b, c)).cpu())
        labels.append(label)
    return {"tokens": torch.cat(tokens), "labels": torch.cat(labels)}


class AttentiveProbe(torch.nn.Module):
    """V-JEPA's attentive probe: a learned query attends over a clip's frozen tokens (one cross-attention block
    with an MLP, pre-norm), then a linear classifier. ``(B, N, D)`` -> ``(B, K)`` logits."""

    def __init__(self, dim: int, num_classes: int, heads: int = 8):
        super().__init__()
        heads = next(h for h in (heads, 4, 2, 1) if dim % h == 0)
        self.query = torch.nn.Parameter(torch.zeros(1, 1, dim))
        torch.nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_tokens, self.norm_mlp, self.norm_out = (torch.nn.LayerNorm(dim) for _ in range(3))
        self.attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.classifier = torch.nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = self.norm_tokens(tokens)  # (B, N, D)
        q = self.query.expand(len(tokens), -1, -1)  # (B, 1, D)
        h = q + self.attention(q, x, x, need_weights=False)[0]  # (B, 1, D)
        h = h + self.mlp(self.norm_mlp(h))
        return self.classifier(self.norm_out(h[:, 0]))  # (B, K)


def attentive_probe(train: dict, test: dict, seed: int = 0, epochs: int = PROBE_EPOCHS, device="cpu") -> float:
    """Train an :class:`AttentiveProbe` on the training clips' frozen tokens (every clip a sample, AdamW with
    cosine decay, ``epochs`` passes but at least ``PROBE_MIN_STEPS`` steps: a small set gets more passes) and
    return the test videos' top-1 from the softmax averaged over their clips."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = train["tokens"].flatten(0, 1)  # (N*C, n_tokens, D)
    y = train["labels"].repeat_interleave(train["tokens"].shape[1])  # (N*C,)
    num_classes = int(max(train["labels"].max(), test["labels"].max())) + 1
    probe = AttentiveProbe(x.shape[-1], num_classes).to(device)
    per_epoch = -(-len(x) // PROBE_BATCH)
    epochs = max(epochs, -(-PROBE_MIN_STEPS // per_epoch))
    steps = epochs * per_epoch
    opt = torch.optim.AdamW(probe.parameters(), lr=PROBE_LR, weight_decay=PROBE_WD)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    probe.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(PROBE_BATCH):
            loss = F.cross_entropy(probe(x[idx].to(device).float()), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    with torch.no_grad():
        n, c = test["tokens"].shape[:2]
        logits = torch.cat([probe(part.to(device).float()).cpu()
                            for part in test["tokens"].flatten(0, 1).split(4 * PROBE_BATCH)])  # (N*C, K)
        video = logits.softmax(-1).unflatten(0, (n, c)).mean(1).argmax(-1)  # (N,)
    return (video == test["labels"]).float().mean().item()


def linear_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Multinomial logistic regression on frozen features (standardised), scikit-learn's lbfgs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x.numpy())
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(scaler.transform(train_x.numpy()), train_y.numpy())
    return float((clf.predict(scaler.transform(test_x.numpy())) == test_y.numpy()).mean())


def eval_dataset(cfg, subset: str, temporal: str) -> VideoDataset:
    """The labelled videos of ``subset`` as fixed evaluation clips; ``temporal`` is the network's sampling
    (``segments`` or ``clip``)."""
    videos = load_split(cfg.data, subset)
    videos.require_present()
    entries = [e for e in videos.good if e.label >= 0]
    if not entries:
        raise DataError(f"{videos.source}: no labelled entries to evaluate on")
    return VideoDataset(videos, "eval", cfg.data.frames, cfg.data.size, temporal, cfg.data.stride,
                        clips=cfg.data.eval_clips, reader=reader_for(cfg.data), seed=cfg.run.seed, entries=entries)


def evaluate_model(model: DTGStudent, cfg, protocol: str, device="cpu", progress: bool = False,
                   test_subset: str = "test") -> dict:
    """One protocol on ``cfg.data``: finetune needs a classifier; the others train nothing in the network."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    model = model.to(device)
    if protocol == "attentive":
        return _attentive(model, cfg, device, progress, test_subset)
    test = extract(model, eval_dataset(cfg, test_subset, model.temporal), device, progress=progress, desc=f"{test_subset} clips")
    if protocol == "finetune":
        if test["logits"] is None:
            raise CheckpointError("protocol finetune needs a fine-tuned checkpoint (it has no classifier); "
                                  "use linear, knn or retrieval for a pre-trained one")
        out = classification_scores(test["logits"], test["labels"])
        out["top1"] = out["video_top1"]
        out["labels"] = test["labels"].tolist()
        return out
    train = extract(model, eval_dataset(cfg, "train", model.temporal), device, progress=progress, desc="train clips")
    return frozen_protocol(protocol, train, test, cfg.run.seed)


def _attentive(model: DTGStudent, cfg, device, progress: bool, test_subset: str) -> dict:
    tokens = {subset: extract_tokens(model, eval_dataset(cfg, subset, model.temporal), device, progress=progress,
                                     desc=f"{subset} tokens") for subset in ("train", test_subset)}
    return {"top1": attentive_probe(tokens["train"], tokens[test_subset], cfg.run.seed, device=device)}


def frozen_protocol(protocol: str, train: dict, test: dict, seed: int) -> dict:
    """A protocol that trains nothing in the network (linear, knn, retrieval), from extracted features."""
    if protocol == "linear":
        return {"top1": linear_probe(train["feats"].mean(1), train["labels"], test["feats"].mean(1),
                                     test["labels"], seed)}
    res = frozen_feature_scores(train, test)
    return {"top1": res["knn_top1"]} if protocol == "knn" else {k: res[k] for k in res if k.startswith("R@")}


def frozen_feature_scores(train: dict, test: dict) -> dict:
    """kNN top-1 and retrieval R@k from one extraction of train and test features (:func:`extract` output),
    plus the test videos' unit embeddings ``test_x`` ``(N, D)`` for plots."""
    tr_x, te_x = video_embeddings(train["feats"]), video_embeddings(test["feats"])
    tr_y, te_y = train["labels"], test["labels"]
    return {"knn_top1": knn_accuracy(tr_x, tr_y, te_x, te_y), **retrieval_recall(tr_x, tr_y, te_x, te_y),
            "test_x": te_x}


def split_config(cfg, split: int):
    """The same data config on official split ``split`` (UCF101 list names / HMDB51 split number)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.split = split
    if cfg.data.format == "ucf101":
        for key in ("train_list", "test_list"):
            value = getattr(cfg.data, key)
            new = re.sub(r"(trainlist|testlist)0[123]", lambda m: f"{m.group(1)}0{split}", value)
            if not Path(new).is_file():
                raise DataError(f"split {split}: list file not found: {new}")
            setattr(cfg.data, key, new)
    elif cfg.data.format != "hmdb51":
        raise DataError(f"data.format={cfg.data.format} has no official splits; use --split 1")
    return cfg


def evaluate_checkpoints(checkpoints: list[str], cfg, protocol: str, splits: list[int], device="cpu",
                         progress: bool = True) -> dict:
    """Evaluate on each split (one checkpoint per split for finetune, or one for all) and average."""
    if protocol == "finetune" and len(splits) > 1 and len(checkpoints) != len(splits):
        raise CheckpointError("the finetune protocol over several splits needs one fine-tuned checkpoint "
                              "per split (--checkpoint given once per split, in split order)")
    if protocol not in ("finetune", "attentive") and len(checkpoints) == 1 and len(splits) > 1:
        per_split = _frozen_over_splits(load_student(checkpoints[0], device), cfg, protocol, splits, device, progress)
    else:
        per_split = {}
        for i, split in enumerate(splits):
            model = load_student(checkpoints[i] if len(checkpoints) > 1 else checkpoints[0], device)
            scfg = split_config(cfg, split) if len(splits) > 1 or split != cfg.data.split else cfg
            res = evaluate_model(model, scfg, protocol, device, progress)
            per_split[split] = {k: v for k, v in res.items() if isinstance(v, float)}
    keys = per_split[splits[0]].keys()
    mean = {k: float(np.mean([per_split[s][k] for s in splits])) for k in keys}
    return {"protocol": protocol, "splits": per_split, "mean": mean}


def _frozen_over_splits(model: DTGStudent, cfg, protocol: str, splits: list[int], device, progress: bool) -> dict:
    """The official splits hold the same videos: extract every video's features once, then score each split's
    train and test sets from those rows."""
    sets = {}  # (split, subset) -> its evaluation dataset
    for split in splits:
        scfg = split_config(cfg, split)
        for subset in ("train", "test"):
            sets[split, subset] = eval_dataset(scfg, subset, model.temporal)
    rows: dict[str, int] = {}
    union = []
    for dataset in sets.values():
        for entry in dataset.entries:
            key = str(dataset.videos.full_path(entry))
            if key not in rows:
                rows[key] = len(union)
                union.append(entry)
    first = next(iter(sets.values()))
    everything = VideoDataset(first.videos, "eval", cfg.data.frames, cfg.data.size, model.temporal, cfg.data.stride,
                              clips=cfg.data.eval_clips, reader=reader_for(cfg.data), seed=cfg.run.seed,
                              entries=union)
    feats = extract(model.to(device), everything, device, progress=progress,
                    desc=f"{len(union)} videos of {len(splits)} splits")["feats"]

    def part(dataset: VideoDataset) -> dict:
        index = torch.tensor([rows[str(dataset.videos.full_path(e))] for e in dataset.entries])
        return {"feats": feats[index], "labels": torch.tensor([e.label for e in dataset.entries])}

    per_split = {}
    for split in splits:
        res = frozen_protocol(protocol, part(sets[split, "train"]), part(sets[split, "test"]), cfg.run.seed)
        per_split[split] = {k: v for k, v in res.items() if isinstance(v, float)}
    return per_split
