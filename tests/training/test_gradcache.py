"""optim.micro_batch (GradCache): a batch embedded in micro-batches gives the whole batch's gradients."""
import copy
import dataclasses

import pytest
import torch

from dtgnet.training import Trainer
from tests.conftest import tiny_cfg

VIT = {"student.arch": "vit_t", "student.patch_size": 8, "student.tubelet": 2, "data.frames": 4,
       "student.temporal_shift": False}


def _gradients(tr: Trainer, batch, micro: int) -> tuple[dict, dict]:
    tr.cfg.optim.micro_batch = micro
    stats = tr.backward(batch)
    grads = {n: p.grad.clone() for n, p in tr.step_module.named_parameters() if p.grad is not None}
    return stats, grads


def _double_batch(tr: Trainer):
    batch = tr.to_batch(next(iter(tr.loader(0))))
    return dataclasses.replace(batch, a=batch.a.double(), b=None if batch.b is None else batch.b.double())


TOKENS = {"student.mask_ratio": 0.5, "loss.token_weight": 1.0}


@pytest.mark.parametrize("mode,micro,extra", [("pretrain", 1, {}), ("pretrain", 3, {}), ("joint", 2, {}),
                                              ("pretrain", 2, TOKENS)])
def test_micro_batches_give_the_whole_batch_gradients(tiny_synth, tmp_path, mode, micro, extra):
    """fp64, a ViT student (LayerNorm: no batch statistics in the backbone; the heads' batch norm sees the
    whole batch): self term, learned teacher weights, a queue of past teacher embeddings and (joint)
    cross-entropy; micro-batches of 1 and of 3 (an uneven last one); masked views with token distillation
    (each micro-batch's rows of the visible tokens)."""
    over = {**VIT, "loss.weighting": "learned", "loss.queue_size": 8, "optim.batch_size": 4, **extra}
    tr = Trainer(tiny_cfg(tiny_synth, tmp_path / f"{mode}{micro}{len(extra)}", **over), mode, progress=False)
    try:
        tr.step_module.double()
        for t in tr.teachers:
            t.double()
        batch = _double_batch(tr)
        tr.backward(batch)  # fills the queue: the negatives below include past batches'
        queues, rng = copy.deepcopy(tr.objective.state()), torch.get_rng_state()  # the classifier's dropout
        whole, g_whole = _gradients(tr, batch, 0)
        tr.objective.load_state(copy.deepcopy(queues), tr.device)
        torch.set_rng_state(rng)
        cached, g_cached = _gradients(tr, batch, micro)
        assert whole.keys() == cached.keys() and sorted(g_whole) == sorted(g_cached)
        for k in whole:
            torch.testing.assert_close(cached[k], whole[k], rtol=1e-12, atol=1e-12, msg=k)
        assert any("log_vars" in n for n in g_whole)  # the learned weights' gradient is compared too
        for n in g_whole:
            torch.testing.assert_close(g_cached[n], g_whole[n], rtol=1e-9, atol=1e-12, msg=n)
        for q_new, q_old in zip(tr.objective.queues, queues["queues"]):  # the queue moved on once, as unbatched
            assert q_new.shape[0] == min(8, q_old.shape[0] + 8)
    finally:
        tr.close()


def test_frozen_batch_norm_cnn_with_every_view_and_segment_is_exact(tiny_synth, tmp_path):
    """A TSN-R18 whose batch norm runs on its running statistics (student.freeze_bn) has no batch statistics
    either: exact too, with the reversed view (time-arrow term) and per-segment features (segment term)."""
    over = {"student.freeze_bn": True, "loss.reverse_weight": 1.0, "loss.segment_weight": 1.0, "data.frames": 3}
    tr = Trainer(tiny_cfg(tiny_synth, tmp_path / "tsn", **over), "pretrain", progress=False)
    try:
        tr.step_module.double().train()
        for t in tr.teachers:
            t.double()
        batch = _double_batch(tr)
        whole, g_whole = _gradients(tr, batch, 0)
        cached, g_cached = _gradients(tr, batch, 3)
        assert {"self", "teacher/imagenet"} <= whole.keys()
        for k in whole:
            torch.testing.assert_close(cached[k], whole[k], rtol=1e-12, atol=1e-12, msg=k)
        for n in g_whole:
            torch.testing.assert_close(g_cached[n], g_whole[n], rtol=1e-9, atol=1e-12, msg=n)
    finally:
        tr.close()


def test_batch_norm_students_update_running_statistics_once(tiny_synth, tmp_path, capsys):
    """A BatchNorm student (TSN-R18): the gradient-free pass leaves the running statistics alone, so they
    move once per micro-batch, as plain gradient accumulation would move them; the run says that its
    gradients are not the whole batch's."""
    tr = Trainer(tiny_cfg(tiny_synth, tmp_path / "bn", **{"optim.batch_size": 4, "optim.micro_batch": 2}),
                 "pretrain", progress=False)
    assert "student.freeze_bn=true makes them so" in capsys.readouterr().err
    try:
        batch = tr.to_batch(next(iter(tr.loader(0))))
        bn = next(m for m in tr.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        start = copy.deepcopy(tr.step_module.state_dict())
        tr.cfg.optim.micro_batch = 2
        tr.backward(batch)
        after_cached = bn.running_mean.clone()
        tr.step_module.load_state_dict(start)
        with torch.no_grad():  # the two micro-batches, each once
            for sl in (slice(0, 2), slice(2, 4)):
                tr.step_module(batch.a[sl], batch.b[sl])
        torch.testing.assert_close(after_cached, bn.running_mean)
        assert int(bn.num_batches_tracked) == int(start[next(k for k in start if "num_batches_tracked" in k)]) + 2
    finally:
        tr.close()
