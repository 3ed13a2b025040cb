"""The study's statistics and entry names: seed means with t intervals, paired per-seed differences, the
share of the label gap, the targets. Pure functions of the study's records (``study.json``)."""
from __future__ import annotations

import math

import numpy as np


def grid_name(weights: tuple[float, float]) -> str:
    named = {(1.0, 0.0): "dtg_imagenet", (0.0, 1.0): "dtg_action", (1.0, 1.0): "dtg_equal"}
    return named.get(tuple(weights), "dtg_w{:g}_{:g}".format(*weights))


def fraction_name(kind: str, fraction: float) -> str:
    """``dtg_1of4``: ``kind`` pre-trained on a quarter of the unlabelled videos."""
    return f"{kind}_1of{round(1 / fraction):d}"


def token_name(ratio: float) -> str:
    """``vit_token_m75``: masked token distillation alone at a mask ratio of 0.75."""
    return f"vit_token_m{round(100 * ratio):d}"


def summarise(values: list[float]) -> tuple[float, list[float]]:
    """Mean and two-sided 95 % Student-t confidence interval of the mean (a single value: a zero-width one)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, [m, m]
    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, [m - half, m + half]


PROBES = ("linear_probe", "attentive_probe")
"""Frozen-student probe scores some entries carry (the pre-trained ViTs)."""


def entry_stats(seeds: dict[str, dict]) -> dict:
    """``{seed: {"top1", "knn", "r1"[, probes]}}`` (fractions) -> study.json's shape, in percent."""
    out = {}
    probes = [p for p in PROBES if all(p in r for r in seeds.values())]
    for metric in ("top1", "knn", "r1", *probes):
        values = [100 * seeds[s][metric] for s in sorted(seeds, key=int)]
        m, ci = summarise(values)
        out.update({f"{metric}_mean": round(m, 2), f"{metric}_ci95": [round(ci[0], 2), round(ci[1], 2)],
                    f"{metric}_seeds": [round(v, 2) for v in values]})
    return out


# ------------------------------------------------------------------------------------------ the runs

def best_on_val(per_seed: dict[str, dict[str, dict]], names: list[str]) -> tuple[str, dict[str, float]]:
    """The name with the highest mean val top-1, and every name's mean val top-1, over the seeds every name
    has (a 5-seed entry is not compared on seeds a 3-seed one never saw)."""
    shared = set.intersection(*(set(per_seed[n]) for n in names))
    val = {n: float(np.mean([per_seed[n][s]["val_top1"] for s in sorted(shared)])) for n in names}
    return max(names, key=lambda n: val[n]), val


def seed_differences(study: dict, a: str, b: str, metric: str = "top1", metric_b: str | None = None) -> list[float]:
    """The per-seed differences ``a - b`` (points) over the seeds both have (the entries of a seed share its
    labelled videos and initial draw); ``metric_b``: b's metric, when it differs (one entry's two probes). A
    single-run entry (a teacher's kNN) is compared with every seed of the other."""
    xs, ys = study[a][f"{metric}_seeds"], study[b][f"{metric_b or metric}_seeds"]
    ys = ys * len(xs) if len(ys) == 1 else ys
    return [x - y for x, y in zip(xs, ys)]


def paired(study: dict, a: str, b: str, metric: str = "top1", metric_b: str | None = None
           ) -> tuple[float, list[float], int]:
    """Mean and 95 % interval of :func:`seed_differences`, and how many seeds that is."""
    diffs = seed_differences(study, a, b, metric, metric_b)
    m, ci = summarise(diffs)
    return m, ci, len(diffs)


def label_gap_share(study: dict, name: str) -> float | None:
    """The share (%) of the label gap, scratch at 10 % of the labels -> ``scratch_full``, that ``name``
    closes; None without the floor, the ceiling or a gap between them."""
    if "scratch_full" not in study or "scratch" not in study:
        return None
    lo, hi = study["scratch"]["top1_mean"], study["scratch_full"]["top1_mean"]
    return 100 * (study[name]["top1_mean"] - lo) / (hi - lo) if hi > lo else None


def check_targets(study: dict, dtg: str | None, supervised: str | None = "supervised", ssl: str | None = "ssl"
                  ) -> list[dict]:
    """The targets, each on the test split's means and on the paired per-seed differences. A target with a
    positive margin needs the mean difference to reach it and the paired 95 % interval to exclude 0; one
    with a margin of 0 or below needs the mean difference only. ``dtg``: the DTG entry (the best on val);
    ``supervised``: the supervised entry joint training is held against (the better of the two supervised
    recipes on val); ``ssl``: the SSL entry DTG is held against (the better schedule on val). A target
    whose entries the study did not run is left out. One seed (an interim report) meets no positive margin:
    it has no interval."""

    def target(text: str, a: str | None, b: str | None, margin: float, metric: str = "top1",
               metric_b: str | None = None) -> dict | None:
        if a not in study or b not in study or f"{metric}_seeds" not in study[a] or \
                f"{metric_b or metric}_seeds" not in study[b]:
            return None
        gap, ci, n = paired(study, a, b, metric, metric_b)
        met = gap >= margin and (margin <= 0 or (n >= 2 and ci[0] > 0))  # one seed has no interval
        return {"target": text, "gap": round(gap, 2), "margin": margin, "met": bool(met), "seeds": n,
                "paired_ci95": [round(ci[0], 2), round(ci[1], 2)]}

    teachers = [n for n in study if n.startswith("teacher_knn_")]
    best_teacher = max(teachers, key=lambda n: study[n]["knn_mean"]) if teachers else None
    out = [target(f"{dtg} >= scratch + 15", dtg, "scratch", 15),
           target(f"{dtg} >= {ssl} + 5", dtg, ssl, 5)]
    if "scratch_full" in study and dtg in study:  # a share of means: no per-seed interval; None: no gap
        share = label_gap_share(study, dtg)
        out.append({"target": f"{dtg} closes >= 50 % of the label gap (scratch -> scratch_full)",
                    "gap": None if share is None else round(share, 1), "margin": 50,
                    "met": share is not None and share >= 50, "seeds": None, "paired_ci95": None})
    out += [
        target(f"{dtg} kNN >= the best teacher's kNN ({best_teacher}) + 5", dtg, best_teacher, 5, "knn"),
        target("dtg_full >= scratch_full + 3 (100 % of the labels)", "dtg_full", "scratch_full", 3),
        target("dtg_1of4 >= ssl on every video (kNN)", "dtg_1of4", "ssl", 0, "knn"),
        target("dtg_1of4 >= ssl on every video (top-1)", "dtg_1of4", "ssl", 0),
        target(f"joint_dtg >= {supervised} + 3 (the better supervised recipe on val)", "joint_dtg", supervised, 3),
        target("dtg_adaptive >= dtg_best_fixed - 1", "dtg_adaptive", "dtg_best_fixed", -1),
        target("vit_dtg >= vit_ssl (the method carries over to a ViT student)", "vit_dtg", "vit_ssl", 0),
        target("dtg_init >= scratch_init + 5 (an ImageNet-initialised student)", "dtg_init", "scratch_init", 5),
        target("dtg_init >= ssl_init + 3 (an ImageNet-initialised student)", "dtg_init", "ssl_init", 3),
        target(f"dtg_init kNN >= the best teacher's kNN ({best_teacher})", "dtg_init", best_teacher, 0, "knn"),
        target("vit_dtg_token >= vit_dtg + 5 (masked token distillation added)", "vit_dtg_token", "vit_dtg", 5),
        target("vit_dtg_token >= vit_dtg_masked (the token term, at the same mask)", "vit_dtg_token",
               "vit_dtg_masked", 0),
    ]
    tokens = [n for n in ("vit_token", "vit_dtg_token") if n in study]
    if tokens:
        best_token = max(tokens, key=lambda n: study[n]["knn_mean"])
        out.append(target(f"{best_token} kNN >= the best teacher's kNN ({best_teacher}) + 5 (the best token "
                          f"entry)", best_token, best_teacher, 5, "knn"))
    out += [target(f"{n}: attentive probe >= linear probe + 3", n, n, 3, "attentive_probe", "linear_probe")
            for n in ("vit_ssl", "vit_dtg", "vit_token", "vit_dtg_token", "vit_dtg_masked")]

    return [t for t in out if t is not None]


APPEARANCE_RANGE = (0.70, 0.85)
"""Where ``single_frame_full / scratch_full`` lies for UCF101-like data (HMDB51 about 0.70, UCF101 about
0.85; Something-Something v2 about 0.25-0.35): the ucf_like design is calibrated into it."""


def appearance_ratio(study: dict) -> dict | None:
    """How much of the video model one frame achieves: per seed, ``single_frame_full`` top-1 over
    ``scratch_full`` top-1 (both on 100 % of the labels), their mean and 95 % interval; None without both."""
    if "single_frame_full" not in study or "scratch_full" not in study:
        return None
    xs, ys = study["single_frame_full"]["top1_seeds"], study["scratch_full"]["top1_seeds"]
    ratios = [x / y for x, y in zip(xs, ys)]
    m, ci = summarise(ratios)
    return {"mean": round(m, 3), "ci95": [round(ci[0], 3), round(ci[1], 3)], "seeds": [round(r, 3) for r in ratios],
            "range": list(APPEARANCE_RANGE), "in_range": APPEARANCE_RANGE[0] <= m <= APPEARANCE_RANGE[1]}
