"""`dtgnet embed`: rows that are the student's features, an index that names them, a run that resumes after
an interruption without redoing finished videos (and never leaves a half-written output under the final
names), torchrun shards, and nearest-video search."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dtgnet.inference.embed as embed_module
from dtgnet.cli import main
from dtgnet.evaluation import eval_dataset, extract
from dtgnet.students import checkpoint_config, load_student


def run_embed(*args) -> int:
    return main(["embed", *map(str, args), "--no-progress", "--workers", "1"])


def test_rows_are_the_students_features_in_index_order(colours, colour_student, tmp_path):
    out = tmp_path / "emb"
    assert run_embed(colour_student, colours / "test.txt", "--out", out, "--dtype", "float32", "--heads", "all") == 0
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    feats = np.load(out / "features.npy")
    assert feats.shape == (6, 512) and feats.dtype == np.float32 and [r["row"] for r in index] == list(range(6))
    cfg = checkpoint_config(colour_student)
    model = load_student(colour_student)
    ref = extract(model, eval_dataset(cfg, "test", model.temporal), "cpu")["feats"].mean(1)  # (N, D)
    assert [r["path"] for r in index] == [str(colours / line.split()[0]) for line in
                                          (colours / "test.txt").read_text().splitlines()]
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(feats), ref, dim=1)
    assert cos.min() > 0.99  # the same clips; frames scaled inside the streaming decoder
    assert not (out / "head.imagenet.npy").exists() and json.loads((out / "embed.json").read_text())["heads"] == []


def test_windows_and_heads_and_search(colours, colour_student, tmp_path, capsys):
    from tests.conftest import stitched

    video = stitched(tmp_path / "red_then_blue.mp4")
    out = tmp_path / "emb"
    assert run_embed(colour_student, video, colours / "train", "--out", out, "--window", "2") == 0
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["start"], r["end"]) for r in index[:4]] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]
    assert np.load(out / "features.npy").dtype == np.float16 and len(index) == 4 + 12
    capsys.readouterr()
    assert main(["embed", "--query", str(colours / "test" / "blue_0.mp4"), "--index", str(out), "-k", "3"]) == 0
    hits = capsys.readouterr().out.splitlines()
    assert len(hits) == 3
    for hit in hits:  # "similarity  path  [start-end s]": blue training videos, or the stitched video's blue half
        parts = hit.split()
        assert float(parts[2].split("-")[0]) >= 4.0 if "red_then_blue" in parts[1] else "/blue_" in parts[1], hit
    sims = [float(h.split()[0]) for h in hits]
    assert sims == sorted(sims, reverse=True)


def test_an_interrupted_run_resumes_and_finishes_only_what_is_missing(colours, colour_student, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert run_embed(colour_student, colours / "train", "--out", whole, "--dtype", "float32") == 0
    out = tmp_path / "cut"
    real, seen = embed_module.run_clips, []

    def stops_after_five(*args, **kwargs):
        for n, result in enumerate(real(*args, **kwargs)):
            if n == 5:
                raise KeyboardInterrupt
            seen.append(result.plan.path)
            yield result

    monkeypatch.setattr(embed_module, "run_clips", stops_after_five)
    monkeypatch.setattr("dtgnet.data.bulk.JOURNAL_EVERY_S", 0.0)
    assert run_embed(colour_student, colours / "train", "--out", out, "--dtype", "float32") == 130
    assert not (out / "features.npy").exists() and (out / "features.npy.tmp").exists()
    monkeypatch.setattr(embed_module, "run_clips", real)
    decoded = []
    monkeypatch.setattr(embed_module, "run_clips",
                        lambda model, plans, *a, **k: (decoded.extend(p.path for p in plans), real(model, plans, *a, **k))[1])
    assert run_embed(colour_student, colours / "train", "--out", out, "--dtype", "float32") == 0
    assert len(decoded) == 12 - 5 and not set(decoded) & set(seen)
    np.testing.assert_allclose(np.load(out / "features.npy"), np.load(whole / "features.npy"), atol=1e-5)
    assert (out / "index.jsonl").read_text() == (whole / "index.jsonl").read_text()
    assert not (out / "embed.progress").exists() and not (out / "features.npy.tmp").exists()


def test_torchrun_shards_give_the_single_process_rows_and_predictions(colours, colour_student, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    for nproc in (1, 2):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                    "dtgnet"]
        common = [str(colour_student), str(colours / "test.txt"), "--workers", "0", "--no-progress"]
        for command in (["embed", *common, "--out", f"emb{nproc}", "--dtype", "float32"],
                        ["predict", *common, "--window", "0.5", "--out", f"pred{nproc}.jsonl"]):
            out = subprocess.run(launcher + command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "emb1/features.npy"), np.load(tmp_path / "emb2/features.npy"), atol=1e-5)
    assert (tmp_path / "emb1/index.jsonl").read_text() == (tmp_path / "emb2/index.jsonl").read_text()
    one, two = ([json.loads(line) for line in (tmp_path / f"pred{n}.jsonl").read_text().splitlines()] for n in (1, 2))
    assert [r["path"] for r in one] == [r["path"] for r in two] and len(one) == 6  # every video once, in input order
    for a, b in zip(one, two):
        assert [w["top"][0]["class"] for w in a["windows"]] == [w["top"][0]["class"] for w in b["windows"]]
        assert [t["prob"] for t in a["top"]] == pytest.approx([t["prob"] for t in b["top"]], abs=1e-5)


def test_bad_requests_are_one_line(colour_student, tmp_path, capsys):
    for args, says in (([colour_student], "usage: dtgnet embed CHECKPOINT INPUT... --out DIR"),
                       (["--query", tmp_path / "q.mp4", "--index", tmp_path], "--query: no such file"),
                       ([colour_student, tmp_path, "--out", tmp_path / "o", "--heads", "clip"], "folder holds no videos")):
        assert main(["embed", *map(str, args)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "x.mp4").write_bytes(b"\0" * 10)
    assert main(["embed", str(colour_student), str(tmp_path / "v"), "--out", str(tmp_path / "o"), "--heads", "clip"]) == 2
    assert "--heads: the student has no head 'clip'" in capsys.readouterr().err


def test_an_unreadable_video_is_listed_with_its_reason(colour_student, video_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    assert run_embed(colour_student, video_dir, "--out", out) == 1
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in index if "error" in r}
    assert set(errors) == {"empty.mp4", "truncated.mp4", "garbage.mp4"} and len(index) == 7
    assert json.loads((out / "embed.json").read_text())["unreadable"] == 3
    assert "garbage.mp4" in capsys.readouterr().err
