"""Demo report: Markdown and self-contained HTML with plots (loss curves, teacher weights, accuracy bars,
confusion matrix, an embedding map)."""
from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path

import numpy as np

from ..training.runlog import read_log
from .stats import fraction_name, label_gap_share

ORDER = ("scratch", "ssl", "dtg", "single_frame")
LABELS = {"scratch": "scratch (10 % labels)", "ssl": "SSL pre-train -> 10 % labels",
          "dtg": "DTG pre-train -> 10 % labels", "single_frame": "single frame (all labels)"}


def _plots(out: Path, summary: dict, results: dict, classes: list[str], embeddings: dict, runs: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ("dtg_pretrain", "ssl_pretrain"):
        log = [r for r in read_log(runs / name / "log.jsonl") if "loss" in r]
        if log:  # markers too: a short run logs too few points for a line to show
            ax.plot([r["step"] for r in log], [r["loss"] for r in log], label=name,
                    marker="o" if len(log) < 30 else None, markersize=3)
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.legend(), ax.set_title("Pre-training loss")
    figs.append(("loss_curves.png", "Pre-training loss (DTG: self term + weighted teacher terms; SSL: self term)"))
    fig.tight_layout(), fig.savefig(plot_dir / figs[-1][0], dpi=110), plt.close(fig)

    history = np.array(json.loads((runs / "dtg_pretrain" / "metrics.json").read_text())["teacher_weight_history"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history.size:
        for i, name in enumerate(summary["teacher_weights"]):
            ax.plot(history[:, 0], history[:, i + 1], label=name, marker="o" if len(history) < 30 else None,
                    markersize=3)
    ax.set_xlabel("step"), ax.set_ylabel("w_k"), ax.legend()
    ax.set_title(f"Teacher weights during DTG pre-training ({summary['weighting']})")
    figs.append(("teacher_weights.png", f"Teacher weights w_k over time ({summary['weighting']} weighting)"))
    fig.tight_layout(), fig.savefig(plot_dir / figs[-1][0], dpi=110), plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [n for n in ORDER if n in results]
    vals = [100 * results[n]["top1"] for n in names]
    bars = ax.bar([textwrap.fill(LABELS[n], 16) for n in names], vals, color=["#999", "#69c", "#e63", "#bbb"][:len(names)])
    ax.axhline(100 / len(classes), ls="--", c="k", lw=0.8, label="chance")
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center")
    ax.set_ylabel("test top-1 (%)"), ax.set_ylim(0, 105), ax.legend()
    ax.tick_params(axis="x", labelsize=8)
    figs.append(("accuracy.png", "Video-level top-1 on the test split"))
    fig.tight_layout(), fig.savefig(plot_dir / figs[-1][0], dpi=110), plt.close(fig)

    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    for y, p in zip(results["dtg"]["labels"], results["dtg"]["predictions"]):
        cm[y, p] += 1
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7), ax.set_yticks(range(k), classes, fontsize=7)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")  # readable on dark cells
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("DTG fine-tuned: confusion matrix")
    figs.append(("confusion.png", "Confusion matrix of the DTG student (test split)"))
    fig.tight_layout(), fig.savefig(plot_dir / figs[-1][0], dpi=110), plt.close(fig)

    if embeddings:
        from sklearn.manifold import TSNE

        x = np.array(embeddings["x"])
        y = np.array(embeddings["labels"])
        xy = TSNE(2, perplexity=min(30, len(x) - 1), random_state=0, init="pca").fit_transform(x)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for c in range(k):
            m = y == c
            ax.scatter(xy[m, 0], xy[m, 1], s=12, label=classes[c], marker="o" if c % 2 == 0 else "x")
        ax.legend(fontsize=6, ncol=2), ax.set_xticks([]), ax.set_yticks([])
        ax.set_title("t-SNE of DTG pre-trained features (test videos, no labels used)")
        figs.append(("embedding.png", "Embedding map of the DTG pre-trained student"))
        fig.tight_layout(), fig.savefig(plot_dir / figs[-1][0], dpi=110), plt.close(fig)
    return figs


ONE_RUN = ("This is one run with one seed: reruns, on another machine especially, move entries by several "
           "points and can reverse a gap between them. Which method wins is measured over seeds, with paired "
           "intervals, by `dtgnet study`.")


def write_report(out: Path, summary: dict, results: dict, classes: list[str], embeddings: dict, runs: Path) -> None:
    figs = _plots(out, summary, results, classes, embeddings, runs)
    rows = [("model", "test top-1 (video)", "test top-1 (clip)", "labels", "kNN top-1", "R@1", "R@5")]
    def pct(r, key):
        return f"{100 * r[key]:.1f}" if key in r else "–"

    for n in ORDER:
        if n in results:
            r = results[n]
            rows.append((LABELS[n], pct(r, "top1"), pct(r, "clip_top1"), f"{100 * r['label_fraction']:.0f} %",
                         pct(r, "knn_top1"), pct(r, "retrieval_R@1"), pct(r, "retrieval_R@5")))
    d = summary["data"]
    intro = (f"SynthActions `{d['preset']}`: {d['classes']} classes in time-reversed pairs, "
             f"{d['videos']['train']} train / {d['videos']['val']} val / {d['videos']['test']} test videos, "
             f"{d['stills']} stills. Action teacher (trained on the stills): val accuracy "
             f"{100 * summary['action_teacher']['val_acc']:.1f} %. Final teacher weights ({summary['weighting']}): "
             + ", ".join(f"{k} {v:.3f}" for k, v in summary["teacher_weights"].items())
             + f". Wall time {summary['seconds']:.0f} s on {summary['machine']['device']} ({summary['machine']['threads']} CPU threads).")
    md = ["# dtgnet demo report", "", intro, "",
          "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md += ["", "Chance is {:.1f} %. A single frame cannot tell a class from its time-reversed partner, so the "
           "single-frame model (trained with every label) shows how far appearance alone goes.".format(
               100 / len(classes)), "", ONE_RUN, ""]
    for fname, caption in figs:
        md += [f"## {caption}", "", f"![{caption}](plots/{fname})", ""]
    md += ["## Timings (s)", "", "| step | seconds |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in summary["timings_s"].items()]
    (out / "report.md").write_text("\n".join(md) + "\n")

    def table_html(rs):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rs[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rs[1:])
        return f"<table><tr>{head}</tr>{body}</table>"

    imgs = "".join(
        f"<h2>{html.escape(c)}</h2><img alt='{html.escape(c)}' src='data:image/png;base64,"
        f"{base64.b64encode((out / 'plots' / f).read_bytes()).decode()}'/>" for f, c in figs)
    timing = table_html([("step", "seconds")] + [(k, str(v)) for k, v in summary["timings_s"].items()])
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>dtgnet demo report</title><style>"
            "body{font-family:sans-serif;max-width:900px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>dtgnet demo report</h1><p>{html.escape(intro)}</p>{table_html(rows)}"
            f"<p>{html.escape(ONE_RUN)}</p>{imgs}"
            f"<h2>Timings (s)</h2>{timing}</body></html>")
    (out / "report.html").write_text(page)


# ------------------------------------------------------------------------------------------ study report

DESIGN_NOTES = {
    "twins": "every class has a time-reversed twin: SSv2-like, a frame knows the pair at most",
    "ucf_like": "a third of the classes are time-reversed twins, the rest differ in actor or scene: UCF101-like",
}

STUDY_NOTES = {
    "scratch": "random init, fine-tune recipe",
    "ssl": "pre-train without teachers (self term only)",
    "dtg_best_fixed": "best weight-grid point on val",
    "dtg_learned": "uncertainty-weighted teachers",
    "dtg_adaptive": "label-free adaptive teacher weights",
    "supervised": "joint recipe, cross-entropy only",
    "joint_dtg": "joint recipe, CE + L_DTG (mode ii)",
    "scratch_full": "the ceiling: scratch on 100 % of the labels",
    "ssl_full": "ssl's student fine-tuned on 100 % of the labels",
    "dtg_full": "dtg_adaptive's student fine-tuned on 100 % of the labels",
    "single_frame": "scratch given one frame",
    "single_frame_full": "scratch given one frame, 100 % of the labels",
    "vit_ssl": "ViT-Ti student (2x8x8 tubelets), pre-trained without teachers",
    "vit_dtg": "the same ViT-Ti, adaptive DTG with both teachers",
    "scratch_init": "TSN over EfficientNet-Lite0 started from the ImageNet teacher's weights, fine-tuned directly",
    "ssl_init": "the same initialised student, pre-trained without teachers, then fine-tuned",
    "dtg_init": "the same initialised student, adaptive DTG with both teachers, then fine-tuned",
    "vit_token": "best vit_token_mNN on val",
    "vit_dtg_token": "vit_dtg plus masked token distillation (mask 0.75), teacher tokens online",
    "vit_dtg_masked": "vit_dtg with 75 % of the tubelets masked, no token term (vit_dtg_token's control)",
    "dtg_video": "dtg's recipe, co-taught by a video teacher (the dtg_eN student of its seed, online)",
}


def _note(name: str, meta: dict) -> str:
    """The table's "what" cell of entry ``name``."""
    long = meta["plan"].get("long_pretrain_epochs", 0)
    if long and name in (f"ssl_e{long}", f"dtg_e{long}"):
        return f"{name.split('_')[0].replace('dtg', 'dtg_adaptive')}'s recipe, pre-trained {long} epochs"
    if name.startswith("vit_token_m"):
        return f"the ViT-Ti, masked token distillation alone (UMT), mask {int(name[len('vit_token_m'):]) / 100:g}"
    note = STUDY_NOTES.get(name, "")
    if name == "dtg_best_fixed":
        note += f": {meta['best_fixed']}"
    if name == "vit_token" and meta.get("best_token"):
        note += f": {meta['best_token']}"
    return note


def _fmt(entry: dict, metric: str) -> str:
    lo, hi = entry[f"{metric}_ci95"]
    return f"{entry[f'{metric}_mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def _efficiency_plot(path: Path, results: dict, fractions: list[float]) -> None:
    """kNN and 10 %-label top-1 of ssl and dtg against the share of unlabelled videos pre-trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    xs = sorted(fractions) + [1.0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, title in ((axes[0], "knn", "kNN top-1 (%)"), (axes[1], "top1", "top-1, 10 % labels (%)")):
        for kind, full, colour in (("ssl", "ssl", "#69c"), ("dtg", "dtg_adaptive", "#e63")):
            names = [fraction_name(kind, f) for f in sorted(fractions)] + [full]
            means = np.array([results[n][f"{metric}_mean"] for n in names])
            ci = np.array([results[n][f"{metric}_ci95"] for n in names])
            ax.errorbar(xs, means, yerr=np.stack([means - ci[:, 0], ci[:, 1] - means]), color=colour,
                        marker="o", capsize=3, label=kind)
        ax.set_xscale("log", base=2), ax.set_xticks(xs, [f"1/{round(1 / x)}" if x < 1 else "all" for x in xs])
        ax.set_xlabel("unlabelled training videos"), ax.set_title(title), ax.grid(alpha=0.3), ax.legend()
    fig.suptitle("Data efficiency: mean of seeds, 95 % interval", fontsize=10)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def entry_colour(name: str) -> str:
    """Teacher-guided entries red, self-supervised blue, teachers light grey, the rest (labels only) grey."""
    if name.startswith(("dtg", "joint", "vit_dtg", "vit_token")):
        return "#e63"
    if name.startswith(("ssl", "vit_ssl")):
        return "#69c"
    return "#bbb" if name.startswith("teacher") else "#999"


def _study_plot(path: Path, results: dict, design: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)[::-1]  # first entry on top
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.32 * len(names) + 1.2), sharey=True)
    for ax, metric, title in ((axes[0], "top1", "top-1 (%): 10 % of the labels, *_full all"),
                              (axes[1], "knn", "kNN top-1 (%)")):
        means = np.array([results[n][f"{metric}_mean"] for n in names])
        ci = np.array([results[n][f"{metric}_ci95"] for n in names])
        err = np.stack([means - ci[:, 0], ci[:, 1] - means])
        ax.barh(names, means, xerr=err, color=[entry_colour(n) for n in names], capsize=2)
        for y, (m, seeds) in enumerate(zip(means, [results[n][f"{metric}_seeds"] for n in names])):
            ax.plot(seeds, [y] * len(seeds), "k.", ms=3)
        ax.set_title(title), ax.set_xlim(0, 100), ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"SynthActions study ({design}): mean of seeds, 95 % interval, dots = seeds", fontsize=10)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def write_study_report(out: Path, results: dict, meta: dict) -> None:
    """``study.md`` (command, machine, wall time, the table, the weight grid, data efficiency, the targets),
    ``study.png`` and ``study_efficiency.png``."""

    design = meta["data"].get("design", "twins")
    _study_plot(out / "study.png", results, design)
    fractions = meta["plan"].get("video_fractions", [])
    curve = [fraction_name(k, f) for f in fractions for k in ("ssl", "dtg")] + ["ssl", "dtg_adaptive"]
    efficiency = bool(fractions) and all(n in results for n in curve)
    if efficiency:
        _efficiency_plot(out / "study_efficiency.png", results, fractions)
    plan, sizes, m = meta["plan"], meta["plan"]["sizes"], meta["machine"]
    minutes = meta["seconds"] / 60
    interim = meta.get("interim_seeds")
    side = meta.get("side_entries", [])
    ratios = [n for n in side if n.startswith("vit_token_m")]
    lines = [
        f"# DTG-Net efficacy study on SynthActions ({design})", "",
        *([f"**Interim report**: seeds {', '.join(map(str, interim))} of {', '.join(map(str, plan['seeds']))} "
           f"have finished every entry. The study is not finished; everything below uses those seeds only.",
           ""] if interim else []),
        (f"- Command: `{meta['command']}`" if meta["command"] else "- Command: (called from Python)")
        + "".join(f"; entries added by `{c}`" for c in meta.get("grown_by", []) if c),
        f"- Machine: {m['device']}, {m['threads']} torch threads, {m['cpus']} CPUs, {m['platform']}, "
        f"torch {m['torch']}",
        f"- Wall time: {minutes:.1f} min of runs in all ({meta['seconds_this_invocation'] / 60:.1f} min in the "
        f"last invocation{', which resumed an earlier one' if meta['resumed'] else ''})",
        f"- Data: SynthActions `{meta['data']['preset']}` ({DESIGN_NOTES[design]}), {meta['data']['classes']} classes, "
        f"{'/'.join(str(v) for v in meta['data']['videos'].values())} {'/'.join(meta['data']['videos'])} videos, "
        f"{meta['data']['stills']} stills; action teacher val accuracy "
        f"{100 * meta['action_teacher']['val_acc']:.1f} %",
        f"- Sizes: {sizes['frames']} frames of {sizes['size']}², batch {sizes['batch_size']}, pre-train "
        f"{sizes['pretrain_epochs']} epochs, fine-tune {sizes['finetune_epochs']} epochs on "
        f"{100 * sizes['label_fraction']:.0f} % of the labels (lr {plan['finetune_lr']:g}, head ×"
        f"{plan['finetune_head_lr_scale']:g}), teachers at {sizes['teacher_input']}²"
        + (f", max {sizes['max_steps']} steps per run" if sizes["max_steps"] else "")
        + (f"; joint: {plan['joint_epochs']} epochs over the unlabelled videos at batch {sizes['batch_size']}, "
           f"half of each batch labelled" if plan.get("joint_unlabelled") else
           "; joint: the fine-tune recipe on the labelled videos only"),
        f"- Seeds: {', '.join(map(str, plan['seeds']))} for the headline entries"
        + (f", the first {plan['side_seeds']} for {', '.join(side)}" if side else "")
        + ("; the mask ratios not chosen, the first seed only" if len(ratios) > 1 else "")
        + f"; full labels: {plan['full_label_epochs']} fine-tune epochs"
        + (f"; overrides: `{' '.join(plan['overrides'])}`" if plan["overrides"] else ""), "",
        "Entries: mean over seeds with the 95 % Student-t interval of the mean, in %. top-1 is video-level "
        "on the test split; kNN and R@1 are on the label-free representation (the pre-trained student for "
        "pre-training entries, else the trained student; teacher_knn_* use the teacher's pooled features, "
        "and their top-1 is that kNN). Gap closed: the share of the label gap (scratch at 10 % of the labels "
        "-> scratch_full) that an entry's top-1 closes.", "",
        "| entry | top-1 | kNN top-1 | R@1 | seeds (top-1) | val top-1 | gap closed | what |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results.items():
        seeds = ", ".join(f"{v:.1f}" for v in e["top1_seeds"])
        val = [r["val_top1"] for r in meta["per_seed"][name].values() if "val_top1" in r]
        note = _note(name, meta)
        val_cell = f"{100 * np.mean(val):.1f}" if val else "–"  # teacher kNN entries have no val run
        share = None if name.startswith("teacher_knn_") else label_gap_share(results, name)
        share_cell = "–" if share is None else f"{share:.0f} %"
        lines.append(f"| {name} | {_fmt(e, 'top1')} | {_fmt(e, 'knn')} | {_fmt(e, 'r1')} | {seeds} | {val_cell} "
                     f"| {share_cell} | {note} |")
    lines += ["", "![study](study.png)"]
    ratio = meta.get("appearance_ratio")
    if ratio:
        lo, hi = ratio["range"]
        lines += ["", "## How much one frame knows", "",
                  f"single_frame_full ÷ scratch_full (top-1, both on 100 % of the labels): **{ratio['mean']:.2f}** "
                  f"[{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}] over {len(ratio['seeds'])} seeds "
                  f"({', '.join(f'{r:.2f}' for r in ratio['seeds'])}). For comparison, with an ImageNet-initialised "
                  f"TSN: UCF101 about 0.85, HMDB51 about 0.70, Something-Something v2 about 0.25-0.35; the ucf_like "
                  f"design is calibrated into [{lo:.2f}, {hi:.2f}]"
                  + (" (in range)." if ratio["in_range"] else " (outside it).")]
    probed = [n for n, e in results.items() if "attentive_probe_mean" in e and "linear_probe_mean" in e]
    if probed:
        lines += ["", "## Frozen students: linear and attentive probes", "",
                  "The pre-trained student frozen, a probe trained on every training video's label, test top-1 "
                  "(%), as `dtgnet eval --protocol linear|attentive` scores it: logistic regression on the pooled "
                  "feature (linear), V-JEPA's cross-attention pooling over the tokens then a linear layer "
                  "(attentive).", "",
                  "| entry | linear probe | attentive probe | attentive - linear (mean of seeds) |", "|---|---|---|---|"]
        lines += [f"| {n} | {_fmt(results[n], 'linear_probe')} | {_fmt(results[n], 'attentive_probe')} | "
                  f"{results[n]['attentive_probe_mean'] - results[n]['linear_probe_mean']:+.1f} |" for n in probed]
    timed = {}
    for stage, seconds in meta["stage_seconds"].items():
        name, _, seed = stage.rpartition("_s")
        if name in results and seed.isdigit():
            timed.setdefault(name, []).append(seconds)
    if timed:
        lines += ["", "## Wall time per entry", "", "Seconds per seed (pre-training, fine-tuning and scoring "
                  "together), mean over the seeds run.", "", "| entry | seconds per seed | seeds |", "|---|---|---|"]
        lines += [f"| {n} | {np.mean(ts):.0f} | {len(ts)} |" for n, ts in timed.items()]
    if meta["grid_val_top1"]:
        lines += ["", "## Teacher-weight grid (chosen on val)", "",
                  "| (imagenet, action) | entry | val top-1 (mean) | test top-1 |", "|---|---|---|---|"]
    for w, name in zip(plan["grid"], meta["grid_val_top1"]):  # the same order
        mark = " (chosen)" if name == meta["best_fixed"] else ""
        lines.append(f"| ({w[0]:g}, {w[1]:g}) | {name}{mark} | {100 * meta['grid_val_top1'][name]:.1f} | "
                     f"{results[name]['top1_mean']:.1f} |")
    if efficiency:
        lines += ["", "## Data efficiency", "", "Pre-trained on a share of the unlabelled training videos (as many "
                  "steps as on all of them), then fine-tuned on the same 10 % of the labels.", "",
                  "![data efficiency](study_efficiency.png)"]
    if meta["targets"]:
        lines += ["", f"## Targets (DTG = `{meta['dtg']}`, the best DTG entry on val; SSL = `{meta['ssl_baseline']}`, "
                  f"the better SSL schedule on val)", "",
                  "A target with a positive margin is met when the mean per-seed difference reaches it and its "
                  "95 % interval excludes 0.", "",
                  "| target | mean per-seed difference (points) | its 95 % interval | seeds | met |",
                  "|---|---|---|---|---|"]
    for t in meta["targets"]:
        if t["paired_ci95"] is None:  # the label-gap share: a ratio of means, no per-seed interval
            share = "no label gap" if t["gap"] is None else f"{t['gap']:.0f} % of the gap"
            lines.append(f"| {t['target']} | {share} | – | – | {'yes' if t['met'] else 'no'} |")
        else:
            lines.append(f"| {t['target']} | {t['gap']:+.1f} | [{t['paired_ci95'][0]:+.1f}, "
                         f"{t['paired_ci95'][1]:+.1f}] | {t['seeds']} | {'yes' if t['met'] else 'no'} |")
    (out / "study.md").write_text("\n".join(lines) + "\n")

