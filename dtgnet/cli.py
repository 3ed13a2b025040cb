"""Command line: `dtgnet <command>`. A user mistake prints one line and exits with status 2."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .errors import DtgError, Preempted

CONFIG_HELP = "YAML config file (see `dtgnet config` for every key)"
OVERRIDE_HELP = "dotted overrides such as optim.lr=0.01 data.frames=8 teachers.0.weight=0.5"


def _add_train(sub, name: str, helptext: str):
    p = sub.add_parser(name, help=helptext, description=helptext)
    p.add_argument("-c", "--config", help=CONFIG_HELP)
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    p.add_argument("--resume", nargs="?", const="always", default="never", metavar="auto",
                   help="continue the run in run.out from its newest readable checkpoint; '--resume auto' "
                        "resumes when there is one and starts fresh otherwise (for torchrun restarts and "
                        "requeued jobs)")
    p.add_argument("--force", action="store_true", help="overwrite run.out if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if name == "finetune":
        p.add_argument("--init", help="checkpoint (.pt) or student.safetensors whose backbone initialises the "
                                      "student; omit to train from scratch")
    return p


def _add_bulk(p) -> None:
    """Options of the commands that decode a whole dataset (prepare, teacher cache)."""
    p.add_argument("--workers", type=int, default=-1,
                   help="decoding processes (default: the cores available); 0 decodes in this process")
    p.add_argument("--fps", type=float, default=0.0,
                   help="keep about this many frames per second of each video (default: every frame)")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame (ignored with --fps)")


def _bulk_options(args) -> dict:
    if args.fps < 0:
        raise DtgError(f"--fps must be >= 0, got {args.fps}")
    if args.stride < 1:
        raise DtgError(f"--stride must be >= 1, got {args.stride}")
    if args.workers < -1:
        raise DtgError(f"--workers must be >= 0, got {args.workers}")
    return {"fps": args.fps, "stride": args.stride, "workers": None if args.workers == -1 else args.workers}


def _add_clip_options(p) -> None:
    """How ``predict`` and ``embed`` cut videos into clips and run them."""
    p.add_argument("--root", default="", help="folder that relative paths in list files start from "
                                              "(default: the list file's folder)")
    p.add_argument("--clips", type=int, default=0, help="clips per video, averaged (default: the checkpoint's "
                                                        "data.eval_clips, as in eval)")
    p.add_argument("--window", type=float, default=0.0, help="seconds per window: one result per window, a timeline")
    p.add_argument("--stride", type=float, default=0.0, help="seconds between window starts (default: --window)")
    p.add_argument("--batch", type=int, default=16, help="clips per forward pass, across videos and windows")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (default: the cores available)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the student runs")
    p.add_argument("--decode-timeout", type=float, default=60.0,
                   help="seconds a file's decoder may make no progress before the file is given up (0: never)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_inference(sub) -> None:
    pred = sub.add_parser(
        "predict", help="class probabilities of new videos, per video or per window, with a report",
        description="Apply a fine-tuned (or joint) student to video files, folders or list files: the top-k "
                    "classes per video (mean over --clips clips, as eval) or per --window; zero-shot from a "
                    "CLIP-family teacher's head with --zero-shot. Exit status 0: every video read; 1: some "
                    "could not be (each named on stderr and in the output); 2: a usage error.")
    pred.add_argument("checkpoint", help="run checkpoint (.pt), student.safetensors or exported student folder")
    pred.add_argument("inputs", nargs="+", metavar="INPUT", help="video file, folder (recursive) or list file")
    pred.add_argument("--top-k", type=int, default=5, help="classes reported per video and window")
    pred.add_argument("--out", help="write JSON lines (.jsonl) or CSV (.csv) here (default: JSON lines on stdout)")
    pred.add_argument("--html", help="also write a self-contained report with thumbnails and plots")
    pred.add_argument("--zero-shot", action="store_true",
                      help="classify with the head of the student's CLIP-family teacher against that teacher's "
                           "text embeddings of the prompted --classes (no classifier needed)")
    pred.add_argument("--classes", default="", help="zero-shot class names: 'a,b,c' or a file, one per line")
    pred.add_argument("--teacher", default="", help="zero-shot: which CLIP-family teacher's head (when several)")
    pred.add_argument("--prompt", default="a video of a person {}.", help="zero-shot prompt; {} is the class name")
    _add_clip_options(pred)

    emb = sub.add_parser(
        "embed", help="features of new videos (per video or window) to .npy files; nearest-video search",
        description="Write the student's backbone features (and with --heads its teacher heads' projections) of "
                    "each video or --window to OUT/features.npy with OUT/index.jsonl; resumable and torchrun-"
                    "sharded. With --query VIDEO --index DIR: the nearest videos or windows by cosine similarity.")
    emb.add_argument("paths", nargs="*", metavar="CHECKPOINT INPUT",
                     help="the student file, then video files, folders or list files (not with --query)")
    emb.add_argument("--out", help="output directory")
    emb.add_argument("--heads", default="", help="also write these teacher heads' projections: names, or 'all'")
    emb.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="stored precision")
    emb.add_argument("--query", help="a video to search for in --index")
    emb.add_argument("--index", help="an embed output directory to search")
    emb.add_argument("-k", type=int, default=10, help="neighbours to list")
    _add_clip_options(emb)

    exp = sub.add_parser(
        "export", help="the student as ONNX, torch.export (.pt2) or a self-describing folder",
        description="Export a student for another runtime. onnx and pt2 take float clips (B, T, 3, S, S) in "
                    "[0, 1] and return the backbone features, the class logits (fine-tuned students) and each "
                    "teacher head's projection; both are checked against PyTorch after writing.")
    exp.add_argument("checkpoint", help="run checkpoint (.pt), student.safetensors or student folder")
    exp.add_argument("--format", required=True, choices=("onnx", "pt2", "folder"), help="what to write")
    exp.add_argument("--out", required=True, help="file (onnx, pt2) or directory (folder) to write")
    exp.add_argument("--opset", type=int, default=18, help="ONNX opset")
    exp.add_argument("--tolerance", type=float, default=1e-4,
                     help="largest absolute difference to PyTorch accepted (onnx, pt2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtgnet", description="DTG-Net: video action recognition guided by frozen image teachers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate, scan and prepare datasets",
                          description="Generate SynthActions, scan a list for bad videos, or decode a dataset "
                                      "once into a fast frame file.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth = dsub.add_parser("synth", help="write the SynthActions benchmark",
                            description="Write SynthActions (mp4 videos, lists, stills) under OUT.")
    synth.add_argument("out", help="output directory")
    synth.add_argument("--preset", choices=("quick", "default", "study", "ucf_like", "ucf_like_quick", "ucf_like_study"),
                       default="default", help="size and design: quick / default / study are SSv2-like (every class "
                       "has a time-reversed twin), ucf_like* UCF101-like (appearance tells most classes apart)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    scan = dsub.add_parser("scan", help="check every video of a list, write a manifest",
                           description="Decode every entry of LIST and write {ok: [...], bad: [...]} to --out.")
    scan.add_argument("list", help="list file (or split file / directory for the format)")
    scan.add_argument("--root", required=True, help="data root the list's paths are relative to")
    scan.add_argument("--out", required=True, help="manifest JSON to write")
    scan.add_argument("--format", default="list", help="list, ucf101, hmdb51, kinetics, folders or frames")
    scan.add_argument("--classes", default="", help="class file (required for ucf101: classInd.txt)")
    scan.add_argument("--split", type=int, default=1, help="split number (hmdb51)")
    scan.add_argument("--subset", default="train", choices=("train", "val", "test"), help="hmdb51 subset")
    scan.add_argument("--backend", default="pyav", help="pyav, decord or torchcodec")

    prep = dsub.add_parser("prepare", help="decode a dataset once into a fast uint8 frame file",
                           description="Decode every video of the config's train/val/test lists once, resize "
                                       "(short side to --size, centre crop) and store the frames as a uint8 "
                                       "array file; training and evaluation read it with data.prepared=OUT.")
    prep.add_argument("-c", "--config", help=CONFIG_HELP)
    prep.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--size", type=int, default=0, help="stored frame side (default: data.size * 8/7)")
    _add_bulk(prep)

    teacher = sub.add_parser("teacher", help="train an image-based action teacher, cache teacher features",
                             description="Train an image-based action teacher from still images, or write the "
                                         "configured teachers' per-frame embeddings to disk.")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, metavar="TEACHER_COMMAND")
    ttrain = tsub.add_parser("train", help="fine-tune an ImageNet backbone on still images in class folders",
                             description="Train on IMAGES_DIR/<class>/*.jpg|png (Stanford40 / BU101 layout); "
                                         "write a safetensors teacher that configs name with source: action.")
    ttrain.add_argument("images_dir", help="directory of class folders of images")
    ttrain.add_argument("--out", required=True, help="teacher file to write (.safetensors)")
    ttrain.add_argument("--epochs", type=int, default=30, help="training epochs of the head")
    ttrain.add_argument("--input-size", type=int, default=96, help="image side given to the backbone")
    ttrain.add_argument("--seed", type=int, default=0, help="random seed")
    ttrain.add_argument("--finetune-blocks", type=int, default=0,
                        help="also fine-tune the backbone's last N blocks (0: frozen backbone, head only)")

    tcache = tsub.add_parser("cache", help="embed every training frame once per teacher, to disk",
                             description="Write each configured teacher's per-frame embeddings of the training "
                                         "videos (float16) to --out or run.teacher_cache_dir; "
                                         "training reads them when run.teacher_cache_dir names the directory.")
    tcache.add_argument("-c", "--config", help=CONFIG_HELP)
    tcache.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    tcache.add_argument("--out", help="cache directory (default: run.teacher_cache_dir)")
    _add_bulk(tcache)

    _add_train(sub, "pretrain", "mode i: self-supervised DTG pre-training (labels are not read)")
    _add_train(sub, "finetune", "fine-tune a student on (a fraction of) the labels")
    _add_train(sub, "joint", "mode ii: supervised DTG, CE + lambda * DTG end to end")

    ev = sub.add_parser("eval", help="evaluate a checkpoint",
                        description="Evaluate one checkpoint on the test list: finetune (clip and video top-1), "
                                    "linear probe, attentive probe (a cross-attention pooler trained on the frozen "
                                    "tokens), kNN or retrieval R@1/5/10/20/50.")
    ev.add_argument("--checkpoint", action="append", required=True,
                    help="checkpoint .pt or student.safetensors (repeat once per split for finetune --split all)")
    ev.add_argument("--protocol", choices=("finetune", "linear", "attentive", "knn", "retrieval"), required=True,
                    help="evaluation protocol")
    ev.add_argument("-c", "--config", help="config whose data section to use (default: the checkpoint's)")
    ev.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    ev.add_argument("--split", default="", help="official split 1, 2, 3 or 'all' (3-split mean); "
                                                "default: data.split")
    ev.add_argument("--json", help="also write the results to this file")

    _add_inference(sub)

    study = sub.add_parser(
        "study", help="efficacy study on SynthActions: every baseline, teacher, weighting and protocol, 5 seeds",
        description="Train every entry of the efficacy study (scratch, ssl, dtg_* teachers and weightings, "
                    "supervised, joint_dtg, single_frame, teacher kNN), the full-label and fewer-videos "
                    "protocols and the ceiling, with 5 seeds (3 for the side entries) on SynthActions; write "
                    "study.json, study.md and the plots under --out.")
    study.add_argument("overrides", nargs="*", help="dotted config overrides applied to every run (to study "
                                                    "a method change), e.g. loss.queue_size=256")
    study.add_argument("--out", required=True, help="output directory")
    study.add_argument("--quick", action="store_true", help="smoke size: two seeds, two steps per run (a few minutes)")
    study.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    study.add_argument("--resume", action="store_true",
                       help="continue a study in --out: finished runs are skipped, the one under way continues "
                            "from its checkpoint")
    study.add_argument("--preset", choices=("twins", "ucf_like"), default="twins",
                       help="SynthActions' design: twins (SSv2-like, every entry) or ucf_like (UCF101-like, the "
                            "entries its comparison needs)")
    study.add_argument("--entries", default="",
                       help="comma-separated entries to run instead of the preset's (e.g. "
                            "scratch_full,single_frame_full to calibrate); --resume with more adds them")
    study.add_argument("--interim", action="store_true",
                       help="train nothing: report on the seeds of the study in --out that have finished every "
                            "entry (while it runs on, or after it stopped)")
    demo = sub.add_parser("demo", help="the whole method on the embedded SynthActions benchmark",
                          description="Generate SynthActions, train the action teacher, DTG and SSL pre-train, "
                                      "fine-tune on 10%% of the labels, evaluate, write results.json and a report.")
    demo.add_argument("--out", default="demo_out", help="output directory")
    demo.add_argument("--quick", action="store_true", help="small and fast (about 3 minutes on 2 CPU cores)")
    demo.add_argument("--smoke", action="store_true",
                      help="every stage and the report at three steps per run (a pipeline check; numbers mean nothing)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--force", action="store_true", help="overwrite an existing output directory")

    bench = sub.add_parser("bench", help="measure student, DTG (online / cached teachers) and loader speed",
                           description="Measure on SynthActions, in one run: student-only step, DTG step with "
                                       "online teachers, DTG step with cached teachers, and DataLoader clips/s "
                                       "with PyAV per sample vs the prepared frame file.")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the steps")
    bench.add_argument("--json", help="write the figures to this JSON file")
    bench.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the benchmark)")
    bench.add_argument("--models", action="store_true",
                       help="instead: every student's step, every teacher source's images/s, and a ViT's DTG step "
                            "with timm, open_clip and Hugging Face teachers online vs cached (needs dtgnet[timm,clip,hf])")

    cfg = sub.add_parser("config", help="print every config key with its default and meaning",
                         description="Print every config key, its default value and its description.")
    cfg.add_argument("-c", "--config", help="show this file resolved instead of the defaults")
    cfg.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    return parser


def _cmd_data_prepare(args) -> int:
    from .config import load_config
    from .data.lists import load_split
    from .data.prepare import prepare, prepared_size
    from .data.video import get_reader

    cfg = load_config(args.config, args.overrides)
    size = args.size or prepared_size(cfg.data.size)
    if size < cfg.data.size:
        raise DtgError(f"--size {size} is smaller than data.size={cfg.data.size}")
    lists = [load_split(cfg.data, s) for s in ("train", "val", "test")
             if getattr(cfg.data, f"{s}_list") or cfg.data.format == "hmdb51"]
    r = prepare(lists, get_reader(cfg.data.reader), args.out, size, **_bulk_options(args))
    if not r["videos"] and not r["bad"]:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"prepared {r['videos']} videos, {r['frames']} frames at {size}x{size}: {r['bytes'] / 2**20:.1f} MiB "
          f"({r['bytes'] / max(r['frames'], 1) / 1024:.1f} KiB per frame), {len(r['bad'])} unreadable -> {args.out}")
    return 0


def _cmd_data(args) -> int:
    if args.data_command == "prepare":
        return _cmd_data_prepare(args)
    if args.data_command == "synth":
        from .data.synth import generate

        s = generate(args.out, args.preset, args.seed)
        print(f"SynthActions {s['preset']}: {s['classes']} classes, {s['videos']['train']} train / "
              f"{s['videos']['val']} val / {s['videos']['test']} test videos, {s['stills']} stills "
              f"in {s['seconds']:.1f} s -> {args.out}")
        return 0
    from .config import DataConfig, validate_data_paths
    from .data.lists import load_split
    from .data.scan import scan, write_manifest

    dcfg = DataConfig(format=args.format, root=args.root, classes=args.classes, split=args.split,
                      backend=args.backend, **{f"{args.subset}_list": args.list})
    validate_data_paths(dcfg)
    manifest = scan(load_split(dcfg, args.subset), backend="frames" if args.format == "frames" else args.backend)
    write_manifest(manifest, args.out)
    kinds: dict[str, int] = {}
    for b in manifest["bad"]:
        kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
    detail = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    print(f"scanned {len(manifest['ok']) + len(manifest['bad'])}: {len(manifest['ok'])} ok, "
          f"{len(manifest['bad'])} bad{' (' + detail + ')' if detail else ''} -> {args.out}")
    return 0


def _cmd_teacher_cache(args) -> int:
    from .config import load_config
    from .data.lists import load_split
    from .data.video import get_reader
    from .teachers.cache import cache_teachers, image_teachers
    from .training import pick_device

    cfg = load_config(args.config, args.overrides)
    out = args.out or cfg.run.teacher_cache_dir
    if not out:
        raise DtgError("--out or run.teacher_cache_dir must name the cache directory")
    if not cfg.teachers:
        raise DtgError("the config names no teachers")
    device = pick_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    side = cfg.run.token_cache_grid
    paths, videos = cache_teachers(cfg.teachers, load_split(cfg.data, "train"), cfg.data.frames, cfg.data.size, out,
                                   device, get_reader(cfg.data.reader), token_grid=side, **_bulk_options(args))
    cached = image_teachers(cfg.teachers)
    for tc, path in zip(cached + cached if side else cached, paths):
        kind = f"token maps pooled to {side}x{side}" if path.name.endswith(f".tokens{side}.npy") else "embeddings"
        print(f"teacher {tc.name}: {kind} of {videos} videos -> {path}")
    for tc in cfg.teachers:
        if tc not in cached:
            print(f"teacher {tc.name}: a video teacher, runs online (no per-frame cache)")
    return 0


def _cmd_teacher(args) -> int:
    from .teachers import train_action_teacher

    if args.teacher_command == "cache":
        return _cmd_teacher_cache(args)
    if args.epochs < 1:
        raise DtgError(f"--epochs must be >= 1, got {args.epochs}")
    if args.input_size < 32:
        raise DtgError(f"--input-size must be >= 32, got {args.input_size}")
    if not 0 <= args.finetune_blocks <= 16:
        raise DtgError(f"--finetune-blocks must be in [0, 16], got {args.finetune_blocks}")
    r = train_action_teacher(args.images_dir, args.out, input_size=args.input_size, epochs=args.epochs,
                             seed=args.seed, finetune_blocks=args.finetune_blocks)
    print(f"action teacher: {r['classes']} classes, {r['images']} images, train acc {r['train_acc']:.3f}, "
          f"val acc {r['val_acc']:.3f} -> {r['path']}")
    return 0


def _cmd_train(args) -> int:
    from .config import load_config
    from .training import train

    if args.resume not in ("never", "always", "auto"):
        raise DtgError(f"--resume takes no value or 'auto', got {args.resume!r}")
    if args.resume == "always" and not args.config:
        raise DtgError("--resume needs -c RUN_DIR/config.yaml (or the config the run started with)")
    init = getattr(args, "init", None)
    if init and not Path(init).is_file():
        raise DtgError(f"--init: file not found: {init}")
    cfg = load_config(args.config, args.overrides)
    metrics = train(cfg, args.command, init=init, resume=args.resume, force=args.force,
                    progress=not args.no_progress)
    if "final_loss" not in metrics:  # a non-zero rank of a torchrun job: rank 0 reports
        return 0
    print(f"{args.command}: {metrics['steps']} steps, final loss {metrics['final_loss']}, "
          f"{len(metrics['bad_items'])} bad items -> {cfg.run.out}")
    return 0


def _cmd_eval(args) -> int:
    from .config import load_config
    from .evaluation import evaluate_checkpoints
    from .students import checkpoint_config
    from .training import pick_device

    for c in args.checkpoint:
        if not Path(c).is_file():
            raise DtgError(f"--checkpoint: file not found: {c}")
    base = None if args.config else checkpoint_config(args.checkpoint[0])
    cfg = load_config(args.config, args.overrides, base=base)
    if args.split == "all":
        splits = [1, 2, 3]
    elif args.split in ("1", "2", "3"):
        splits = [int(args.split)]
    elif args.split == "":
        splits = [cfg.data.split]
    else:
        raise DtgError(f"--split must be 1, 2, 3 or all, got {args.split!r}")
    res = evaluate_checkpoints(args.checkpoint, cfg, args.protocol, splits, pick_device(cfg.run.device))
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _clip_options(args):
    from .inference.runner import Options

    opts = Options(clips=args.clips, window=args.window, window_stride=args.stride, batch=args.batch,
                   workers=args.workers, device=args.device, timeout=args.decode_timeout,
                   progress=not args.no_progress)
    opts.check()
    return opts


def _report_unreadable(results) -> int:
    """One stderr line per video that could not be read; the exit status (1 when any)."""
    bad = [r for r in results if r.reason]
    for r in bad:
        print(f"dtgnet: {r.plan.path}: {r.reason}", file=sys.stderr)
    return 1 if bad else 0


def _cmd_predict(args) -> int:
    from .inference import predict as pr
    from .inference.inputs import resolve_inputs
    from .inference.runner import open_student, run_videos
    from .io import write_text_atomic

    opts = _clip_options(args)
    if args.top_k < 1:
        raise DtgError(f"--top-k must be >= 1, got {args.top_k}")
    if args.out and Path(args.out).suffix not in (".jsonl", ".json", ".csv"):
        raise DtgError(f"--out must end in .jsonl or .csv, got {args.out}")
    if not args.zero_shot and (args.classes or args.teacher):
        raise DtgError("--classes and --teacher go with --zero-shot")
    paths = resolve_inputs(args.inputs, args.root)
    student = open_student(args.checkpoint, args.device)
    if args.zero_shot:
        scorer = pr.zero_shot_scorer(student.meta, pr.read_class_names(args.classes), args.teacher, args.prompt)
    else:
        scorer = pr.classifier_scorer(student.meta, args.checkpoint)
        pr.classifier_outputs_match(student.model, scorer)
    results, shard = run_videos(student, paths, opts, scorer.outputs, thumbs=bool(args.html), desc="predict")
    if not shard.main:
        return 0
    records = [pr.record(r, scorer.classes, args.top_k, bool(opts.window)) for r in results]
    text = pr.format_csv(records) if args.out and args.out.endswith(".csv") else pr.format_jsonl(records)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    if args.html:
        from .inference.report import render_html

        how = f"{opts.window:g}-s windows" if opts.window else f"{opts.clips or student.cfg.data.eval_clips} clips per video"
        write_text_atomic(args.html, render_html(results, scorer.classes, f"dtgnet predict: {len(results)} videos",
                                                 f"{args.checkpoint} ({scorer.kind}, {how})", args.top_k))
    ok = sum(1 for r in results if not r.reason)
    print(f"predict: {ok} of {len(results)} videos"
          f"{' -> ' + args.out if args.out else ''}{' and ' + args.html if args.html else ''}", file=sys.stderr)
    return _report_unreadable(results)


def _cmd_embed(args) -> int:
    from .inference.embed import embed_videos, nearest
    from .inference.inputs import resolve_inputs
    from .inference.runner import open_student

    opts = _clip_options(args)
    if args.query or args.index:
        if not (args.query and args.index) or args.paths or args.out:
            raise DtgError("search is `dtgnet embed --query VIDEO --index DIR [-k N]`, with nothing else")
        if args.k < 1:
            raise DtgError(f"-k must be >= 1, got {args.k}")
        if not Path(args.query).is_file():
            raise DtgError(f"--query: no such file: {args.query}")
        for hit in nearest(args.index, Path(args.query), args.k, opts, args.device):
            when = f"  {hit['start']:.2f}-{hit['end']:.2f} s" if hit.get("start") is not None else ""
            print(f"{hit['similarity']:.4f}  {hit['path']}{when}")
        return 0
    if len(args.paths) < 2 or not args.out:
        raise DtgError("usage: dtgnet embed CHECKPOINT INPUT... --out DIR")
    paths = resolve_inputs(args.paths[1:], args.root)
    student = open_student(args.paths[0], args.device)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    r = embed_videos(student, paths, args.out, opts, heads, args.dtype)
    if not r:  # a torchrun rank other than 0
        return 0
    print(f"embed: {r['rows']} rows of {r['videos'] - r['unreadable']} videos, {r['unreadable']} unreadable -> "
          f"{args.out}/features.npy, index.jsonl", file=sys.stderr)
    if r["unreadable"]:
        for line in (Path(args.out) / "index.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if "error" in entry:
                print(f"dtgnet: {entry['path']}: {entry['error']}", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args) -> int:
    from .inference.export import export_student

    r = export_student(args.checkpoint, args.format, args.out, opset=args.opset, tolerance=args.tolerance)
    check = f", max abs difference to PyTorch {r['max_abs_diff']:.2e}" if "max_abs_diff" in r else ""
    dynamic = f", dynamic axes: {', '.join(r['dynamic'])}" if r.get("dynamic") else ""
    print(f"export {args.format}: {r['arch']} -> {args.out}{check}{dynamic}")
    return 0


def _cmd_config(args) -> int:
    import yaml

    from .config import field_docs, load_config, to_dict

    if args.config or args.overrides:
        cfg = load_config(args.config, args.overrides, check_paths=False)
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from .config import Config

    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                walk(v[0], f"{prefix}{k}.N.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(to_dict(Config()), "")
    for key, doc in field_docs().items():
        if key in flat:
            print(f"{key} = {flat[key]!r}\n    {doc}")
    return 0


def _cmd_bench(args) -> int:
    from .training import pick_device

    pick_device(args.device)  # a missing GPU is a one-line error
    if args.models:
        from .experiments.bench_models import format_model_table, run_model_bench

        r = run_model_bench(args.device, quick=args.quick)
        print(format_model_table(r))
    else:
        from .experiments.bench import format_table, run_bench

        r = run_bench(args.device, quick=args.quick)
        print(format_table(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def _cmd_study(args) -> int:
    import dataclasses

    from .experiments.study import PLANS, run_study

    plan = PLANS[{"twins": "", "ucf_like": "ucf_like_"}[args.preset] + ("quick" if args.quick else "full")]
    if args.overrides:
        plan = dataclasses.replace(plan, overrides=tuple(args.overrides))
    if args.entries:
        plan = dataclasses.replace(plan, entries=tuple(e.strip() for e in args.entries.split(",") if e.strip()))
    if args.interim and (args.force or args.resume):
        raise DtgError("--interim reports on a study as it stands: it takes neither --force nor --resume")
    try:
        r = run_study(args.out, force=args.force, resume=args.resume, plan=plan, interim=args.interim,
                      command="dtgnet " + shlex.join(args.argv))
    except Preempted as e:
        again = ["dtgnet", "study", "--out", str(args.out), "--resume", *(["--quick"] if args.quick else []),
                 *(["--preset", args.preset] if args.preset != "twins" else []),
                 *(["--entries", args.entries] if args.entries else []), *args.overrides]
        raise Preempted(e.stopped, f"continue the study with `{shlex.join(again)}`") from None
    meta = r["meta"]
    done = (f"interim report on seeds {', '.join(map(str, meta['interim_seeds']))}" if meta["interim_seeds"] else
            "study done")
    print(f"{done}: {meta['seconds'] / 60:.1f} min of runs -> {args.out}/study.json, study.md, study.png")
    for t in meta["targets"]:
        gap = (f"{t['gap']:+.1f} points" if t["paired_ci95"] else "no label gap" if t["gap"] is None else
               f"{t['gap']:.0f} % of the gap")
        print(f"  {'met    ' if t['met'] else 'missed '} {t['target']} ({gap})")
    return 0


def _cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    results = run_demo(args.out, quick=args.quick, seed=args.seed, force=args.force, smoke=args.smoke)
    print(f"demo done in {results['seconds']:.0f} s -> {args.out}/results.json, report.md, report.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    handlers = {"data": _cmd_data, "teacher": _cmd_teacher, "pretrain": _cmd_train, "finetune": _cmd_train,
                "joint": _cmd_train, "eval": _cmd_eval, "demo": _cmd_demo, "study": _cmd_study, "config": _cmd_config,
                "bench": _cmd_bench, "predict": _cmd_predict, "embed": _cmd_embed, "export": _cmd_export}
    try:
        return handlers[args.command](args)
    except DtgError as e:
        print(f"dtgnet: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"dtgnet: preempted: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # unwritable output, full disk: the user's to fix, not a crash
        print(f"dtgnet: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtgnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
