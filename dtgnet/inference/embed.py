"""``dtgnet embed``: a student's backbone features (and optionally each teacher head's projection) per video or
per window, written as ``.npy`` row files with an index, and nearest-neighbour search over them.

An output directory holds ``features.npy`` ``(rows, D)`` (``head.<teacher>.npy`` beside it), ``index.jsonl``
(one line per row: ``path``, ``row``, ``start``, ``end`` in seconds; one line with ``error`` per unreadable
video) and ``embed.json`` (the checkpoint and options that made it, which ``--query`` reuses). Writing works
like ``dtgnet data prepare``: the rows are reserved up front in ``*.npy.tmp`` files, each finished video is
journalled once its rows are on disk, an interrupted run started again finishes only what is missing, torchrun
ranks share the videos, and the final names appear only when every video is done, so a half-written output
is never read as a whole one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.bulk import Journal, Video, npy_header, plan_key
from ..errors import DataError, DtgError
from ..io import NpyRows, RowFile, write_json_atomic, write_text_atomic
from .runner import Options, Student, open_student, plan_pass, run_videos
from .stream import run_clips

DTYPES = ("float16", "float32")


def embedding_outputs(heads: list[str]):
    """``outputs`` for :func:`run_clips`: backbone features, and the named teacher heads' projections."""
    def outputs(model, x):
        f = model.features(x)  # (B, D)
        return {"features": f, **{f"head.{h}": model.teacher_heads[h](f) for h in heads}}
    return outputs


def _heads(student: Student, heads: list[str]) -> list[str]:
    have = list(student.model.teacher_heads)
    if heads == ["all"]:
        return have
    for h in heads:
        if h not in have:
            raise DtgError(f"--heads: the student has no head {h!r} (it has: {', '.join(have) or 'none'})")
    return heads


def embed_videos(student: Student, paths: list[Path], out_dir, opts: Options, heads: list[str] = (),
                 dtype: str = "float16") -> dict:
    """Write the embeddings of ``paths`` to ``out_dir`` (see the module doc); returns a summary on rank 0."""
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise DtgError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    heads = _heads(student, list(heads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = plan_pass(student, paths, opts)
    shard, plans, failed, cfg = setup.shard, setup.plans, setup.failed, student.cfg
    first_row, total = {}, 0
    for p in plans:
        first_row[p.number] = total
        total += len(p.spans)
    dims = {"features": student.model.backbone.feature_dim,
            **{f"head.{h}": student.model.teacher_heads[h][-1].out_features for h in heads}}
    files = {name: (out / f"{name}.npy", out / f"{name}.npy.tmp", npy_header((total, d), dtype)) for name, d in dims.items()}
    clipping = {"clips": opts.clips or cfg.data.eval_clips, "window": opts.window, "window_stride": opts.window_stride,
                "backend": opts.backend}  # what the rows depend on
    settings = {"checkpoint": str(Path(student.path).resolve()), "options": clipping,
                "heads": heads, "dtype": dtype, "checkpoint_stat": _stat(student.path)}
    key = plan_key([Video(p.path, p.frames, p.fps, 1, first_row[p.number]) for p in plans], Path.cwd(), settings)
    resumable = all(tmp.is_file() for _, tmp, _ in files.values())
    journal = Journal(out / "embed.progress", key, shard, resumable=resumable)
    item = np.dtype(dtype).itemsize
    journal.create_outputs([(tmp, len(header) + total * dims[n] * item) for n, (_, tmp, header) in files.items()])
    writers = {n: RowFile(tmp, len(header) + total * dims[n] * item, create=False) for n, (_, tmp, header) in files.items()}

    def sync() -> None:
        for w in writers.values():
            w.sync()

    try:
        for name, (_, _, header) in files.items():
            writers[name].write(0, header)
        todo = [p for p in plans if p.number % shard.world == shard.rank and p.number not in journal.done]
        bar = tqdm(total=len(todo), desc="embed", unit="video", disable=not (opts.progress and shard.main))
        for result in run_clips(student.model, todo, setup.reader, cfg.data.size, opts.batch, student.device,
                                setup.workers, embedding_outputs(heads), opts.timeout):
            if not result.reason:
                for name, rows in result.outputs.items():
                    offset = len(files[name][2]) + first_row[result.plan.number] * dims[name] * item
                    writers[name].write(offset, np.ascontiguousarray(rows.astype(dtype)))
            journal.finished(result.plan.number, result.reason, sync)
            bar.update(1)
        journal.flush(sync)
        bar.close()
    finally:
        for w in writers.values():
            w.close()
        journal.close()
    shard.barrier()
    if not shard.main:
        return {}
    reasons = {f.plan.number: f.reason for f in failed} | {k: r for k, r in journal.read().items() if r}
    lines = []
    for p in sorted(plans + [f.plan for f in failed], key=lambda p: p.number):
        if p.number in reasons:
            lines.append(json.dumps({"path": p.path, "error": reasons[p.number]}))
            continue
        for r, span in enumerate(p.spans):
            start, end = span if span else (None, None)
            lines.append(json.dumps({"path": p.path, "row": first_row[p.number] + r,
                                     "start": None if start is None else round(start, 3),
                                     "end": None if end is None else round(end, 3)}))
    for final, tmp, _ in files.values():
        os.replace(tmp, final)
    write_text_atomic(out / "index.jsonl", "".join(line + "\n" for line in lines))
    summary = {**settings, "rows": total, "videos": len(plans) + len(failed), "unreadable": len(reasons),
               "dims": dims, "config": student.meta["config"]}
    write_json_atomic(out / "embed.json", summary)
    journal.remove()
    return summary


def _stat(path) -> list:
    st = os.stat(Path(path) / "model.safetensors" if Path(path).is_dir() else path)
    return [st.st_size, st.st_mtime_ns]


def read_index(index_dir) -> tuple[dict, list[dict]]:
    """An embed directory's settings and its row lines (lines with ``row``)."""
    d = Path(index_dir)
    if not (d / "embed.json").is_file() or not (d / "features.npy").is_file():
        raise DataError(f"{d}: not a finished `dtgnet embed` output (no embed.json / features.npy)")
    settings = json.loads((d / "embed.json").read_text())
    rows = [json.loads(line) for line in (d / "index.jsonl").read_text().splitlines() if line.strip()]
    return settings, [r for r in rows if "row" in r]


def nearest(index_dir, query: Path, k: int, opts: Options, device: str = "auto") -> list[dict]:
    """The ``k`` rows of an embed directory nearest to ``query`` (its video-level features, made with the
    index's checkpoint) by cosine similarity, best first."""
    settings, rows = read_index(index_dir)
    if not Path(settings["checkpoint"]).exists():
        raise DataError(f"{index_dir}: its checkpoint {settings['checkpoint']} is gone")
    student = open_student(settings["checkpoint"], device)
    saved = settings["options"]
    opts = Options(clips=saved["clips"], batch=opts.batch, workers=opts.workers, device=device,
                   timeout=opts.timeout, backend=saved["backend"], progress=False)
    results, _ = run_videos(student, [query], opts, embedding_outputs([]))
    if results[0].reason:
        raise DataError(f"{query}: {results[0].reason}")
    q = F.normalize(torch.from_numpy(results[0].outputs["features"].mean(0)), dim=0)  # (D,)
    feats = NpyRows(Path(index_dir) / "features.npy", "run `dtgnet embed` again")
    sims = np.empty(feats.num_rows, dtype=np.float32)
    for start in range(0, feats.num_rows, 65536):  # bounded memory, whatever the index's size
        block = torch.from_numpy(feats.span(start, min(65536, feats.num_rows - start)).astype(np.float32))
        sims[start:start + len(block)] = (F.normalize(block, dim=1) @ q).numpy()
    by_row = {r["row"]: r for r in rows}
    order = np.argsort(-sims, kind="stable")[:k]
    return [{**by_row[int(i)], "similarity": round(float(sims[i]), 6)} for i in order]
