import json
import shutil

import numpy as np
import pytest
import torch

from dtgnet.cli import main
from dtgnet.errors import TooManyBadItems
from dtgnet.evaluation import evaluate_model
from dtgnet.students import checkpoint_config, load_student
from dtgnet.training import Trainer, train
from dtgnet.training.runlog import RunDir, RunDirError, read_log
from tests.conftest import tiny_cfg, tiny_overrides


def test_pretrain_logs_checkpoints_and_metrics(tiny_synth, tmp_path):
    out = tmp_path / "pre"
    metrics = train(tiny_cfg(tiny_synth, out, **{"loss.weighting": "adaptive"}), "pretrain", progress=False)
    assert metrics["steps"] == 2
    for name in ("config.yaml", "log.jsonl", "metrics.json", "student.safetensors", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    logs = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    for key in ("loss", "lr", "clips_per_s", "data_wait_frac", "self", "teacher/imagenet", "weights"):
        assert key in logs[-1], key
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["teacher_weights"]) == {"imagenet"} and saved["teacher_weight_history"]


def test_gradients_reach_student_not_teachers(tiny_synth, tmp_path):
    cfg = tiny_cfg(tiny_synth, tmp_path / "g", **{"loss.weighting": "learned"})
    tr = Trainer(cfg, "pretrain", progress=False)
    try:
        raw = next(iter(tr.loader(0)))
        before = {k: v.clone() for k, v in tr.teachers[0].state_dict().items()}
        out = tr.train_step(tr.to_batch(raw))
        assert torch.isfinite(out["loss"])
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.backbone.parameters()
                   if p.requires_grad and p.ndim > 1)
        assert all(p.grad is None for p in tr.teachers[0].parameters())
        assert all(torch.equal(v, tr.teachers[0].state_dict()[k]) for k, v in before.items())
        assert tr.weighting.log_vars.grad is not None  # learned weights are trained too
    finally:
        tr.close()


def test_time_arrow_term_embeds_the_reversed_view(tiny_synth, tmp_path):
    """loss.reverse_weight: view a played backwards goes through the student in the same pass, and its
    self-term contrast equals the loss function's on those embeddings."""
    tr = Trainer(tiny_cfg(tiny_synth, tmp_path / "arrow", **{"loss.reverse_weight": 1.0, "data.frames": 4}),
                 "pretrain", progress=False)
    try:
        batch = tr.to_batch(next(iter(tr.loader(0))))
        tr.model.eval()  # the same batch-norm statistics for every call below
        with torch.no_grad():
            _, out = tr.step_module(batch.a, batch.b)
            backwards = tr.model.self_head(tr.model(batch.a.flip(1)))
        torch.testing.assert_close(out.self_reversed, backwards, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out.self_reversed, out.self_a, atol=1e-3)  # temporal shift sees order
        tr.model.train()
        stats = tr.train_step(batch)
        assert torch.isfinite(stats["self"]) and stats["self"] > 0
    finally:
        tr.close()


@pytest.mark.parametrize("cached", [False, True])
def test_per_segment_alignment_pairs_each_segment_with_its_frame(tiny_synth, tmp_path, cached):
    """loss.segment_weight: the teacher heads see every segment, the teachers (online or cached) every
    frame, and the sequence embeddings stay the means of those frames."""
    cfg = tiny_cfg(tiny_synth, tmp_path / "seg", **{"loss.segment_weight": 1.0, "data.frames": 3,
                                                  "run.teacher_cache": cached})
    tr = Trainer(cfg, "pretrain", progress=False)
    try:
        batch = tr.to_batch(next(iter(tr.loader(0))))
        emb = tr.teacher_embeddings(batch)
        t_a, f_a = emb.a, emb.frames_a
        assert f_a[0].shape == (4, 3, t_a[0].shape[1])
        torch.testing.assert_close(f_a[0].mean(1), t_a[0])
        plain = tr.teacher_embeddings(batch, per_frame=False)
        assert plain.frames_a is None
        torch.testing.assert_close(t_a[0], plain.a[0], rtol=1e-5, atol=1e-6)
        _, out = tr.step_module(batch.a, batch.b)
        assert out.segments_a[0].shape == (4, 3, out.heads_a[0].shape[1])
        stats = tr.train_step(batch)
        assert torch.isfinite(stats["teacher/imagenet"])
    finally:
        tr.close()


def test_finetune_from_pretrained_and_joint(tiny_synth, tmp_path):
    train(tiny_cfg(tiny_synth, tmp_path / "pre", **{"teachers.0.weight": 0.5}), "pretrain", progress=False)
    ft = train(tiny_cfg(tiny_synth, tmp_path / "ft", **{"data.label_fraction": 0.5}), "finetune",
               init=str(tmp_path / "pre" / "student.safetensors"), progress=False)
    assert ft["videos"] == 12  # half of the 24 labelled training videos, stratified
    pre = load_student(tmp_path / "pre" / "student.safetensors")
    fine_ckpt = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert fine_ckpt["meta"]["num_classes"] == 4 and pre.classifier is None
    joint = train(tiny_cfg(tiny_synth, tmp_path / "joint", **{"loss.form": "margin"}), "joint", progress=False)
    logs = [r for r in read_log(tmp_path / "joint" / "log.jsonl") if "loss" in r]
    assert "ce" in logs[-1] and "dtg" in logs[-1] and joint["steps"] == 2


def test_finetune_init_starts_from_the_pretrained_backbone(tiny_synth, tmp_path):
    """--init loads the pre-trained backbone, every tensor of it, before the first step (and nothing else:
    the classifier is new); without --init the backbone is a fresh initialisation."""
    train(tiny_cfg(tiny_synth, tmp_path / "pre"), "pretrain", progress=False)
    pre = load_student(tmp_path / "pre" / "student.safetensors").backbone.state_dict()
    trainers = {init: Trainer(tiny_cfg(tiny_synth, tmp_path / f"ft_{init}", **{"data.label_fraction": 0.5}), "finetune",
                              init=str(tmp_path / "pre" / "student.safetensors") if init else None, progress=False)
                for init in (True, False)}
    try:
        started = trainers[True].model.backbone.state_dict()
        assert started.keys() == pre.keys() and all(torch.equal(started[k], pre[k]) for k in pre)
        fresh = trainers[False].model.backbone.state_dict()
        assert not all(torch.equal(fresh[k], pre[k]) for k in pre if pre[k].is_floating_point())
        assert trainers[True].model.classifier is not None
    finally:
        for trainer in trainers.values():
            trainer.close()


def test_ssl_without_teachers_and_queue(tiny_synth, tmp_path):
    cfg = tiny_cfg(tiny_synth, tmp_path / "ssl")
    cfg.teachers = []
    assert train(cfg, "pretrain", progress=False)["teacher_weights"] == {}
    cfg = tiny_cfg(tiny_synth, tmp_path / "q", **{"loss.queue_size": 6, "optim.max_steps": 3})
    train(cfg, "pretrain", progress=False)
    ckpt = torch.load(tmp_path / "q" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["queues"][0].shape == (6, 1280)


def test_resume_continues_and_run_dir_rules(tiny_synth, tmp_path):
    out = tmp_path / "r"
    cfg = tiny_cfg(tiny_synth, out, **{"optim.max_steps": 4, "run.checkpoint_every": 2})
    cfg.teachers = []
    train(cfg, "pretrain", progress=False)
    with pytest.raises(RunDirError, match="--resume"):
        Trainer(cfg, "pretrain", progress=False)
    cfg.optim.max_steps = 6
    with pytest.raises(Exception, match="config differs"):
        Trainer(cfg, "pretrain", resume=True, progress=False)
    lock = RunDir(out, resume="always")
    with pytest.raises(RunDirError, match="live run holds .*this process"):
        RunDir(out, resume="always")
    lock.close()


def test_bad_items_counted_and_run_stops(tiny_synth, tmp_path):
    root = tmp_path / "data"
    import shutil

    shutil.copytree(tiny_synth, root)
    lines = (root / "train.txt").read_text().splitlines()
    for i, line in enumerate(lines[:4]):  # salt 4 of 24 files
        path = root / line.split()[0]
        path.write_bytes(b"" if i % 2 else path.read_bytes()[:300])
    cfg = tiny_cfg(root, tmp_path / "ok", **{"data.max_bad_fraction": 0.5, "optim.max_steps": 6})
    cfg.teachers = []
    metrics = train(cfg, "pretrain", progress=False)
    assert 1 <= len(metrics["bad_items"]) and all(b["reason"] for b in metrics["bad_items"])
    events = [r for r in read_log(tmp_path / "ok" / "log.jsonl") if r.get("event") == "bad_item"]
    assert events and events[0]["path"].endswith(".mp4")
    cfg = tiny_cfg(root, tmp_path / "stop", **{"data.max_bad_fraction": 0.01, "optim.max_steps": 6})
    cfg.teachers = []
    with pytest.raises(TooManyBadItems, match="max_bad_fraction"):
        train(cfg, "pretrain", progress=False)
    assert (tmp_path / "stop" / "checkpoints" / "last.pt").exists()  # progress kept


def test_cli_modes(tiny_synth, tmp_path, capsys):
    ov = tiny_overrides(tiny_synth, tmp_path / "cli")
    assert main(["pretrain", *ov, "--no-progress"]) == 0
    assert main(["pretrain", *ov, "--no-progress"]) == 2  # exists
    assert "--resume" in capsys.readouterr().err
    ov_ft = tiny_overrides(tiny_synth, tmp_path / "cli_ft")
    assert main(["finetune", *ov_ft, "--init", str(tmp_path / "cli" / "checkpoints" / "last.pt"),
                 "--no-progress"]) == 0
    assert main(["finetune", *ov_ft, "--init", str(tmp_path / "none.pt"), "--force"]) == 2
    # each protocol's printed figures are the evaluation of that checkpoint on the config's test list
    for ckpt, protocol, keys in (("cli_ft", "finetune", {"clip_top1", "video_top1", "top1"}),
                                 ("cli", "knn", {"top1"}), ("cli", "linear", {"top1"}),
                                 ("cli", "retrieval", {"R@1", "R@5", "R@10", "R@20", "R@50"})):
        path = tmp_path / ckpt / "student.safetensors"
        assert main(["eval", "--checkpoint", str(path), "--protocol", protocol, "--json", str(tmp_path / "e.json")]) == 0
        res = json.loads((tmp_path / "e.json").read_text())["mean"]
        direct = evaluate_model(load_student(path), checkpoint_config(path), protocol)
        assert set(res) == keys and res == pytest.approx({k: direct[k] for k in keys}), protocol
    assert main(["eval", "--checkpoint", str(tmp_path / "cli" / "student.safetensors"),
                 "--protocol", "finetune"]) == 2  # a pre-trained student has no classifier
    assert main(["eval", "--checkpoint", str(tmp_path / "cli" / "student.safetensors"),
                 "--protocol", "knn", "--split", "all"]) == 2  # list format has no official splits


def test_teacher_cache_matches_online_teacher_on_clean_frames(tiny_synth, tmp_path):
    from dtgnet.data.transforms import eval_view, to_tensor
    from dtgnet.teachers.cache import build_caches

    cfg = tiny_cfg(tiny_synth, tmp_path / "c", **{"run.teacher_cache": True})
    tr = Trainer(cfg, "pretrain", progress=False)
    try:
        cache = tr.caches[0]
        ds = tr.dataset
        path = ds.videos.full_path(ds.entries[3])
        frames = torch.tensor([[1, 5]])
        clean = eval_view(to_tensor(ds.reader.read(path, [1, 5])), 32)[None]  # (1, 2, 3, 32, 32)
        online = tr.teachers[0](clean)
        torch.testing.assert_close(cache.lookup(torch.tensor([3]), frames), online, atol=2e-2, rtol=2e-2)
        out = tr.train_step(tr.to_batch(next(iter(tr.loader(0)))))
        assert torch.isfinite(out["loss"]) and "teacher/imagenet" in out
        assert build_caches(tr.teachers, ds, "cpu", progress=False)[0].per_video[0].dtype == np.float16
    finally:
        tr.close()


def test_disk_teacher_cache_matches_and_detects_staleness(tiny_synth, tmp_path, capsys):
    import shutil

    from dtgnet.teachers.cache import StaleCacheError

    root = tmp_path / "data"
    shutil.copytree(tiny_synth, root)
    cache = tmp_path / "cache"
    ov = tiny_overrides(root, tmp_path / "unused")
    assert main(["teacher", "cache", *ov, "--out", str(cache)]) == 0
    assert (cache / "imagenet.npy").exists() and "imagenet" in capsys.readouterr().out
    # cached from disk and cached in memory give the same loss
    losses = {}
    for name, extra in (("disk", {"run.teacher_cache_dir": cache}), ("memory", {"run.teacher_cache": True})):
        train(tiny_cfg(root, tmp_path / name, **extra), "pretrain", progress=False)
        losses[name] = [r["loss"] for r in read_log(tmp_path / name / "log.jsonl") if "loss" in r]
    assert losses["disk"] == pytest.approx(losses["memory"], rel=1e-5)
    # a different teacher preprocessing, or a changed video, is refused with a clear message
    with pytest.raises(StaleCacheError, match="input_size"):
        Trainer(tiny_cfg(root, tmp_path / "s1", **{"run.teacher_cache_dir": cache, "teachers.0.input_size": 48}),
                "pretrain", progress=False)
    first = (root / "train.txt").read_text().split()[0]
    (root / first).write_bytes((root / first).read_bytes() + b"\0")
    with pytest.raises(StaleCacheError, match="changed"):
        Trainer(tiny_cfg(root, tmp_path / "s2", **{"run.teacher_cache_dir": cache}), "pretrain", progress=False)
    assert main(["pretrain", *tiny_overrides(root, tmp_path / "s3", **{"run.teacher_cache_dir": cache})]) == 2
    assert "stale teacher cache" in capsys.readouterr().err


def test_persistent_workers_reproduce_the_single_process_run(tiny_synth, tmp_path):
    losses = {}
    for nw in (0, 2):
        cfg = tiny_cfg(tiny_synth, tmp_path / f"w{nw}", **{"data.num_workers": nw, "optim.epochs": 2,
                                                          "optim.max_steps": 8})
        cfg.teachers = []
        train(cfg, "pretrain", progress=False)  # 6 steps per epoch: crosses an epoch boundary
        losses[nw] = [r["loss"] for r in read_log(tmp_path / f"w{nw}" / "log.jsonl") if "loss" in r]
    assert len(losses[0]) == 8 and losses[0] == pytest.approx(losses[2], rel=1e-6)


def test_cached_and_online_teachers_give_the_same_loss_on_clean_views(tiny_synth, tmp_path):
    """Cached teachers embed the clean frames; fed the same clean frames, online teachers must agree."""
    from dtgnet.data.dataset import VideoDataset
    from dtgnet.data.sampling import tsn_indices
    from dtgnet.training.loop import Batch

    losses = {}
    for cached in (False, True):
        cfg = tiny_cfg(tiny_synth, tmp_path / f"c{cached}", **{"run.teacher_cache": cached, "data.size": 32,
                                                                 "teachers.0.input_size": 32})
        tr = Trainer(cfg, "pretrain", progress=False)
        try:
            ev = VideoDataset(tr.videos, "eval", 2, 32, clips=2, entries=tr.dataset.entries)
            items = [ev[i] for i in range(4)]
            clips = torch.stack([it["clips"] for it in items])  # (B, 2 clips, T, 3, 32, 32)
            counts = [tr.dataset.reader.info(tr.videos.full_path(e)).num_frames for e in tr.dataset.entries[:4]]
            frames = torch.stack([torch.from_numpy(np.stack([tsn_indices(n, 2, None, c, 2) for c in range(2)]))
                                  for n in counts])  # (B, 2 clips, T): the frames each clip shows
            batch = Batch(clips[:, 0], clips[:, 1], torch.zeros(4, dtype=torch.long), torch.arange(4),
                          frames[:, 0], frames[:, 1])
            losses[cached] = tr.train_step(batch)
        finally:
            tr.close()
    for key in ("loss", "teacher/imagenet", "self"):
        assert losses[True][key].item() == pytest.approx(losses[False][key].item(), rel=2e-3), key


def test_teacher_weights_recorded_every_step(tiny_synth, tmp_path):
    cfg = tiny_cfg(tiny_synth, tmp_path / "w", **{"loss.weighting": "adaptive", "run.log_every": 2,
                                                   "optim.max_steps": 5, "optim.epochs": 1})
    metrics = train(cfg, "pretrain", progress=False)
    history = metrics["teacher_weight_history"]
    assert [row[0] for row in history] == [1, 2, 3, 4, 5] and all(len(row) == 2 for row in history)


def test_failed_setup_leaves_no_run_dir(tiny_synth, tmp_path, capsys):
    ov = tiny_overrides(tiny_synth, tmp_path / "f", **{"optim.batch_size": 64})  # more than the 24 videos
    assert main(["pretrain", *ov]) == 2
    assert "fewer than optim.batch_size=64" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()  # the corrected command can simply run again


def test_semi_supervised_joint_uses_unlabelled_videos(tiny_synth, tmp_path):
    over = {"data.label_fraction": 0.25, "data.joint_unlabelled": True, "data.labelled_share": 0.5,
            "optim.max_steps": 3}
    trainer = Trainer(tiny_cfg(tiny_synth, tmp_path / "semi", **over), "joint", progress=False)
    try:
        labels = [e.label for e in trainer.dataset.entries]
        assert len(labels) == 24 and trainer.labelled_count == 8 and labels.count(-1) == 16
        assert all(v >= 0 for v in labels[:8])
        assert trainer.steps_per_epoch == 16 // 2  # batch 4: 2 labelled + 2 unlabelled
        metrics = trainer.fit()
    finally:
        trainer.close()
    logs = [r for r in read_log(tmp_path / "semi" / "log.jsonl") if "loss" in r]
    assert metrics["steps"] == 3 and np.isfinite(logs[-1]["ce"]) and logs[-1]["ce"] > 0 and "dtg" in logs[-1]
    with pytest.raises(Exception, match="data.labelled_share"):
        tiny_cfg(tiny_synth, tmp_path / "bad", **{**over, "data.labelled_share": 0.1})
    with pytest.raises(Exception, match="labels them all"):
        train(tiny_cfg(tiny_synth, tmp_path / "all", **{**over, "data.label_fraction": 1.0}), "joint",
              progress=False)


@pytest.mark.parametrize("arch, extra", [
    ("tsn_r18", {}), ("r3d_18", {}), ("r2plus1d_18", {}), ("s3d", {"data.frames": 8}), ("mvit_v2_s", {}),
    ("swin3d_t", {}), ("vit_t", {"student.patch_size": 8}), ("vit_s", {"student.patch_size": 8}),
    ("vit_b", {"student.patch_size": 8}),
    ("tsn", {"student.backbone": "efficientnet_lite0", "student.init_from": "bundled", "student.temporal_shift": False}),
    ("vit_t", {"student.patch_size": 8, "student.checkpointing": True, "optim.micro_batch": 2,
               "student.mask_ratio": 0.5, "loss.token_weight": 1.0, "run.teacher_cache": False})])
def test_every_student_trains_in_every_mode_with_the_cache_and_resume_exactly(tiny_synth, tmp_path, arch, extra):
    opts = {"student.arch": arch, "run.teacher_cache": True, "optim.max_steps": 2, "run.checkpoint_every": 1,
            "run.keep_checkpoints": 2, "data.num_workers": 0, **extra}
    out = tmp_path / "pre"
    train(tiny_cfg(tiny_synth, out, **opts), "pretrain", progress=False)
    # resume from step 1 as after a crash: the finished weights are bit-identical
    ckpts = out / "checkpoints"
    for f in [*ckpts.glob("last.pt*"), *ckpts.glob("step_00000002.pt*")]:
        f.unlink()
    redo = tmp_path / "redo"
    train(tiny_cfg(tiny_synth, redo, **opts), "pretrain", progress=False)
    reference = torch.load(redo / "checkpoints" / "last.pt", weights_only=True)["model"]
    shutil.rmtree(redo)  # a large student's checkpoints take gigabytes
    train(tiny_cfg(tiny_synth, out, **opts), "pretrain", resume=True, progress=False)
    resumed = torch.load(ckpts / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    shutil.rmtree(ckpts)  # fine-tuning needs the weights only
    once = {**opts, "run.checkpoint_every": 1000}  # one checkpoint, at the end
    ft = train(tiny_cfg(tiny_synth, tmp_path / "ft", **once), "finetune", init=str(out / "student.safetensors"),
               progress=False)
    joint = train(tiny_cfg(tiny_synth, tmp_path / "joint", **once), "joint", progress=False)
    assert ft["steps"] == joint["steps"] == 2
    assert load_student(tmp_path / "ft" / "student.safetensors").backbone.feature_dim > 0


def test_token_distillation_alone_trains_token_heads_only_and_its_student_loads(tiny_synth, tmp_path):
    """loss.clip_weight=0, self term off: UMT's objective. No clip heads are built (none would get a gradient),
    one linear token head per teacher; the student file rebuilds it. A teacher cache serves the clip
    embeddings (here only the adaptive weighting reads them) while the tokens are computed online."""
    opts = {"student.arch": "vit_t", "student.patch_size": 8, "data.frames": 4, "student.temporal_shift": False,
            "loss.token_weight": 1.0, "loss.clip_weight": 0.0, "loss.self_weight": 0.0, "student.mask_ratio": 0.75,
            "run.teacher_cache": True, "loss.weighting": "adaptive"}
    out = tmp_path / "umt"
    train(tiny_cfg(tiny_synth, out, **opts), "pretrain", progress=False)
    logs = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert 0 < logs[-1]["teacher/imagenet"] == pytest.approx(logs[-1]["loss"], rel=1e-5)
    student = load_student(out / "student.safetensors")
    assert len(student.teacher_heads) == 0 and student.token_heads["imagenet"].out_features == 1280
    assert student.token_heads["imagenet"].in_features == student.backbone.feature_dim


def test_a_token_cache_stands_in_for_the_online_teacher_tokens(tiny_synth, tmp_path, capsys):
    """run.token_cache_grid: each frame's pooled teacher grid, cut along the view's crop and flip, gives a
    student cell the teacher tokens of its own place: nearer the online tokens of that cell than to those of
    the other cells, and nearer than the same grid not cut (the whole frame, unmirrored). Written to disk by
    `dtgnet teacher cache`, the grid reads back as built in memory."""
    import dataclasses

    import torch.nn.functional as F

    from dtgnet.teachers.cache import DeviceRows

    opts = {"student.arch": "vit_t", "student.patch_size": 8, "data.frames": 4, "student.temporal_shift": False,
            "loss.token_weight": 1.0, "student.mask_ratio": 0.5, "run.teacher_cache": True,
            "run.token_cache_grid": 4, "teachers.0.input_size": 128, "data.flip": True, "optim.batch_size": 8}
    cfg = tiny_cfg(tiny_synth, tmp_path / "mem", **opts)
    tr = Trainer(cfg, "pretrain", progress=False)
    batch = tr.to_batch(next(iter(tr.loader(0))))
    every = torch.arange(2 * 16).expand(8, -1)  # all 2 x 4 x 4 places of a view
    with torch.no_grad():
        cached = tr._teacher_tokens(0, batch, 0, every)  # (B, N, C)
        whole = dataclasses.replace(batch, geometry_a=torch.tensor([[0.0, 0, 1, 1, 1, 0]]).expand(8, -1))
        uncut = tr._teacher_tokens(0, whole, 0, every)
        memory = tr.token_caches
        tr.token_caches = [None]
        online = tr._teacher_tokens(0, batch, 0, every)
    cos = F.cosine_similarity(cached[:, :, None], online[:, None, :], dim=-1)  # (B, N, N)
    own = cos.diagonal(dim1=1, dim2=2)  # (B, N)
    others = (cos.sum((1, 2)) - own.sum(1)) / (32 * 31)
    assert own.mean() > others.mean() + 0.1
    assert (cached - online).pow(2).mean() < (uncut - online).pow(2).mean()

    overrides = tiny_overrides(tiny_synth, tmp_path / "unused", **opts)
    assert main(["teacher", "cache", *overrides, "--out", str(tmp_path / "disk"), "--workers", "0"]) == 0
    assert f"token maps pooled to 4x4 of 24 videos -> {tmp_path / 'disk' / 'imagenet.tokens4.npy'}" in capsys.readouterr().out
    cfg.run.teacher_cache, cfg.run.teacher_cache_dir, cfg.run.out = False, str(tmp_path / "disk"), str(tmp_path / "d")
    disk = Trainer(cfg, "pretrain", progress=False)
    torch.testing.assert_close(disk.token_caches[0].lookup_frames(batch.index, batch.frames_a),
                               memory[0].lookup_frames(batch.index, batch.frames_a))
    # held on a device (a GPU's, where it fits), the rows are gathered there: the same rows
    strided = dataclasses.replace(batch, frames_a=batch.frames_a * 3 + 1)  # past the last frame: snapped to it
    for cache in (memory[0], disk.token_caches[0]):
        for frames in (batch.frames_a, strided.frames_a):
            assert torch.equal(DeviceRows(cache, "cpu").lookup_rows(batch.index, frames),
                               cache.lookup_rows(batch.index, frames))
    disk.close()
    tr.close()
