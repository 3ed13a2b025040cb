"""SynthActions: the embedded, offline action-video benchmark.

Every class is one half of a pair whose two members differ only in the direction of time: rotate clockwise
vs counter-clockwise, approach vs recede, slide right vs left, rise vs fall, orbit clockwise vs
counter-clockwise. A single frame therefore cannot tell a class from its partner; it shows at most which
pair (the motion blur's shape and the actor's kind hint at it). Actors are cut from real images that
scikit-image and scikit-learn ship (faces from LFW, hand-written digits, the cat, the astronaut, coffee,
rocket, ...); each pair prefers one kind of actor and one kind of scene (each with ``p_favoured``) but any
actor and scene can appear in any class, so appearance is correlated with the class, not determined by it. Backgrounds are real textures and photos,
with camera jitter, drifting clutter and sensor noise. Train, val and test draw actors and backgrounds from
disjoint parts of the source images (like UCF101's groups).

Written as H.264 mp4 files plus ``classes.txt``, ``train.txt``, ``val.txt``, ``test.txt`` (lines
``relative/path.mp4 label``) and ``stills/<class>/*.png`` (single motion-blurred frames of separate
renders, the still-image set for the image-based action teacher). The output depends only on the seed.

Two designs (``SynthPreset.design``):

* ``twins`` (the presets ``quick``, ``default``, ``study``): every class has a time-reversed twin, as above.
  An SSv2-like benchmark: a single frame knows the pair at most.
* ``ucf_like`` (``ucf_like``, ``ucf_like_study``, ...): shaped like UCF101 / HMDB51, where appearance carries
  much of the class. A third of the classes are twins as above; the others differ in what acts (the actor
  kind), where (the scene), or both, and share their motions with other classes, so motion alone does not
  name them either.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PAIRS = [("rotate_cw", "rotate_ccw"), ("approach", "recede"), ("slide_right", "slide_left"),
         ("rise", "fall"), ("orbit_cw", "orbit_ccw")]
"""The motions, in time-reversed pairs."""
ACTOR_KINDS = ["face", "digit", "animal", "person", "object"]  # twins: pair p favours ACTOR_KINDS[p]
SCENES = ["brick", "grass", "gravel", "moon", "stars", "tissue", "retina", "coins", "page"]
"""The background photos (:class:`Sources`), in order; twins: pair p favours SCENES[p]."""


@dataclass(frozen=True)
class SynthClass:
    """One class: its motion (a name in :data:`PAIRS`) and the actor kind and scene it favours."""

    name: str
    motion: str
    actor: str
    scene: str


UCF_LIKE = [
    # one twin pair first, so that the smallest preset (2 "pairs": 4 classes) mixes both kinds of class
    SynthClass("face_rotate_cw", "rotate_cw", "face", "brick"),
    SynthClass("face_rotate_ccw", "rotate_ccw", "face", "brick"),
    SynthClass("digit_rise_gravel", "rise", "digit", "gravel"),
    SynthClass("person_approach_moon", "approach", "person", "moon"),
    SynthClass("object_slide_right", "slide_right", "object", "grass"),
    SynthClass("object_slide_left", "slide_left", "object", "grass"),
    SynthClass("person_rise_gravel", "rise", "person", "gravel"),  # digit_rise_gravel's actor differs
    SynthClass("animal_approach_moon", "approach", "animal", "moon"),  # person_approach_moon's actor differs
    SynthClass("animal_orbit_retina", "orbit_cw", "animal", "retina"),
    SynthClass("animal_orbit_coins", "orbit_cw", "animal", "coins"),  # animal_orbit_retina's scene differs
    SynthClass("digit_slide_page", "slide_right", "digit", "page"),  # object_slide_right's actor and scene differ
    SynthClass("face_rise_stars", "rise", "face", "stars"),  # the other risers differ in actor and scene
]
"""The ``ucf_like`` design: 4 twins (2 pairs) and 8 classes told apart by appearance, in preset order."""
DESIGNS = ("twins", "ucf_like")
SPLITS = ("train", "val", "test")
SPLIT_BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.75), "test": (0.75, 1.0)}  # disjoint source regions


@dataclass(frozen=True)
class SynthPreset:
    pairs: int
    train_per_class: int
    val_per_class: int
    test_per_class: int
    stills_per_class: int
    frames: int
    size: int
    p_favoured: float = 0.75  # chance that the actor kind (and, separately, the scene) is the class's own
    subframes: int = 4  # temporal supersampling: motion blur inside each frame
    design: str = "twins"
    """``twins`` or ``ucf_like`` (module docstring); ``pairs`` is half the number of classes in both."""

    def classes(self) -> list[SynthClass]:
        if self.design == "twins":
            return [SynthClass(m, m, ACTOR_KINDS[p], SCENES[p]) for p, pair in enumerate(PAIRS[:self.pairs])
                    for m in pair]
        if self.design == "ucf_like":
            return UCF_LIKE[:2 * self.pairs]
        raise ValueError(f"unknown SynthActions design {self.design!r} (known: {', '.join(DESIGNS)})")


PRESETS = {
    "quick": SynthPreset(pairs=3, train_per_class=16, val_per_class=4, test_per_class=8, stills_per_class=24,
                         frames=16, size=64),
    "default": SynthPreset(pairs=5, train_per_class=48, val_per_class=12, test_per_class=24,
                           stills_per_class=60, frames=16, size=64),
    # `dtgnet study`: default's training set; val and test at 1,000 videos each, so that a 2-point difference
    # is not lost in sampling noise (240 test videos gave a standard error of 3 points per run)
    "study": SynthPreset(pairs=5, train_per_class=48, val_per_class=100, test_per_class=100,
                         stills_per_class=60, frames=16, size=64),
    # pipeline checks (`demo --smoke`, `study --quick`): every stage runs, the numbers mean nothing
    "smoke": SynthPreset(pairs=2, train_per_class=8, val_per_class=2, test_per_class=2, stills_per_class=8,
                         frames=12, size=48),
}
# the ucf_like design at each size (``ucf_like``: default's); its 12 classes are told apart by appearance more
# often than by motion, so the actor kind and scene follow the class more often than in the twins design
_UCF_LIKE_PAIRS = {"quick": 3, "default": 6, "study": 6, "smoke": 2}
PRESETS.update({("ucf_like" if size == "default" else f"ucf_like_{size}"):
                replace(PRESETS[size], design="ucf_like", pairs=pairs, p_favoured=0.85)
                for size, pairs in _UCF_LIKE_PAIRS.items()})


def design_preset(name: str, design: str = "twins") -> str:
    """The name of preset ``name``'s size in ``design`` (``study``, ``ucf_like`` -> ``ucf_like_study``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    if design not in DESIGNS:
        raise ValueError(f"unknown SynthActions design {design!r} (known: {', '.join(DESIGNS)})")
    if PRESETS[name].design == design:
        return name
    size = {"ucf_like": "default"}.get(name, name.removeprefix("ucf_like_"))
    return {"default": "ucf_like"}.get(size, f"ucf_like_{size}") if design == "ucf_like" else size


def class_names(pairs: int) -> list[str]:
    """The twins design's class names for ``pairs`` pairs."""
    return [name for pair in PAIRS[:pairs] for name in pair]


# ------------------------------------------------------------------------------------------ real images

def _band(arr: np.ndarray, split: str, axis: int = 1) -> np.ndarray:
    lo, hi = SPLIT_BANDS[split]
    n = arr.shape[axis]
    sl = [slice(None)] * arr.ndim
    sl[axis] = slice(int(lo * n), max(int(hi * n), int(lo * n) + 1))
    return arr[tuple(sl)]


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


class Sources:
    """Actor and background material per split, loaded once from scikit-image / scikit-learn."""

    def __init__(self):
        import skimage.data as skd
        from sklearn.datasets import load_digits

        faces = skd.lfw_subset()  # (200, 25, 25) float in [0, 1]
        digits = load_digits().images / 16.0  # (1797, 8, 8)
        photos = {"animal": [skd.chelsea(), skd.horse()], "person": [skd.astronaut(), skd.camera()],
                  "object": [skd.coffee(), skd.rocket(), skd.clock()]}
        backgrounds = [skd.brick(), skd.grass(), skd.gravel(), skd.moon(), skd.hubble_deep_field(),
                       skd.immunohistochemistry(), skd.retina(), skd.coins(), skd.page()]
        self.actors: dict[str, dict] = {}
        self.backgrounds: dict[str, list[np.ndarray]] = {}
        for split in SPLITS:
            lo, hi = SPLIT_BANDS[split]
            self.actors[split] = {
                "face": faces[int(lo * len(faces)):int(hi * len(faces))],
                "digit": digits[int(lo * len(digits)):int(hi * len(digits))],
                **{k: [_rgb(_band(p, split)) for p in v] for k, v in photos.items()},
            }
            self.backgrounds[split] = [_rgb(_band(b, split)) for b in backgrounds]


def _ellipse_mask(h: int, w: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    ax, ay = rng.uniform(0.75, 1.0, size=2)
    r = (xx / ax) ** 2 + (yy / ay) ** 2
    return np.clip((1.0 - r) * 4.0, 0, 1)


def _actor_sprite(src: Sources, split: str, kind: str, rng) -> np.ndarray:
    """RGBA float sprite ``(4, 32, 32)`` in [0, 1]."""
    pool = src.actors[split][kind]
    if kind == "face":
        g = pool[rng.integers(len(pool))]
        rgb = np.repeat(g[..., None], 3, 2) * rng.uniform(0.7, 1.0, size=3)  # tinted
        alpha = _ellipse_mask(*g.shape, rng)
    elif kind == "digit":
        g = pool[rng.integers(len(pool))]
        colour = rng.uniform(0.3, 1.0, size=3)
        rgb = np.ones(g.shape + (3,)) * colour
        alpha = np.clip(g * 1.5, 0, 1)
    else:
        img = pool[rng.integers(len(pool))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.25, 0.5) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        rgb = img[y:y + side, x:x + side].astype(np.float64) / 255.0
        alpha = _ellipse_mask(side, side, rng)
    t = torch.from_numpy(np.concatenate([rgb, alpha[..., None]], 2)).permute(2, 0, 1).float()
    return F.interpolate(t[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]


def _background(src: Sources, split: str, size: int, frames: int, rng, favoured: str | None) -> torch.Tensor:
    """``(frames, 3, size, size)`` crops of one real background (the scene ``favoured`` when given, else a
    random one) with a random-walk camera jitter."""
    pool = src.backgrounds[split]
    img = pool[SCENES.index(favoured) if favoured is not None else rng.integers(len(pool))]
    h, w = img.shape[:2]
    crop = int(min(h, w, rng.uniform(1.2, 2.0) * size))
    pad = 8
    crop = min(crop, min(h, w) - 2 * pad - 1)
    y0, x0 = rng.integers(pad, h - crop - pad + 1), rng.integers(pad, w - crop - pad + 1)
    walk = np.clip(np.cumsum(rng.normal(0, 1.2, size=(frames, 2)), axis=0), -pad, pad).astype(int)
    tint = rng.uniform(0.6, 1.1, size=3)
    out = []
    for dy, dx in walk:
        patch = img[y0 + dy:y0 + dy + crop, x0 + dx:x0 + dx + crop].astype(np.float32) / 255.0 * tint
        out.append(torch.from_numpy(patch).permute(2, 0, 1))
    bg = torch.stack(out).float()
    return F.interpolate(bg, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _trajectory(motion: str, t: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y (canvas units, [-1, 1]), scale (sprite side / canvas side) and angle (rad) at times ``t``
    in [0, 1]. The two motions of a pair are the same path run forwards and backwards in time."""
    base = motion.rsplit("_", 1)[0]
    forward = motion in {p[0] for p in PAIRS}
    tt = t if forward else 1.0 - t
    n = len(t)
    cx = np.full(n, rng.uniform(-0.3, 0.3))
    cy = np.full(n, rng.uniform(-0.3, 0.3))
    scale = np.full(n, rng.uniform(0.4, 0.55))
    angle = rng.uniform(-0.2, 0.2) + rng.normal(0, 0.03, n).cumsum()
    if base == "rotate":
        angle = angle + rng.uniform(0, 2 * math.pi) + tt * rng.uniform(1.6, 3.2)
    elif motion in ("approach", "recede"):
        s0, s1 = rng.uniform(0.18, 0.28), rng.uniform(0.6, 0.8)
        scale = s0 + (s1 - s0) * tt
    elif base == "slide":
        x0 = rng.uniform(-0.75, -0.45)
        cx = x0 + tt * rng.uniform(1.0, 1.4)
    elif motion in ("rise", "fall"):
        y0 = rng.uniform(0.45, 0.75)
        cy = y0 - tt * rng.uniform(1.0, 1.4)
    elif base == "orbit":
        radius = rng.uniform(0.35, 0.5)
        phase = rng.uniform(0, 2 * math.pi)
        theta = phase + tt * rng.uniform(3.0, 4.5)
        cx, cy = radius * np.cos(theta), radius * np.sin(theta)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return cx, cy, scale, angle


def _paste(canvas: torch.Tensor, sprite: torch.Tensor, cx, cy, scale, angle) -> torch.Tensor:
    """Alpha-composite ``sprite`` (4, h, w) onto ``canvas`` (N, 3, S, S) with one affine pose per frame."""
    n, _, s, _ = canvas.shape
    cos, sin = np.cos(angle), np.sin(angle)
    inv = 1.0 / np.maximum(scale, 1e-3)
    # inverse map: canvas coords -> sprite coords
    theta = np.stack([np.stack([cos * inv, sin * inv, -(cos * cx + sin * cy) * inv], -1),
                      np.stack([-sin * inv, cos * inv, -(-sin * cx + cos * cy) * inv], -1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 4, s, s], align_corners=False)
    warped = F.grid_sample(sprite.expand(n, -1, -1, -1), grid, align_corners=False)  # (N, 4, S, S)
    alpha = warped[:, 3:4]
    return canvas * (1 - alpha) + warped[:, :3] * alpha


def render(cls: SynthClass, split: str, src: Sources, preset: SynthPreset, rng, frames: int | None = None
           ) -> np.ndarray:
    """One video of class ``cls``: uint8 ``(frames, S, S, 3)``."""
    frames = frames or preset.frames
    sub = preset.subframes
    kind = cls.actor if rng.random() < preset.p_favoured else ACTOR_KINDS[rng.integers(len(ACTOR_KINDS))]
    actor = _actor_sprite(src, split, kind, rng)
    scene = cls.scene if rng.random() < preset.p_favoured else None  # like UCF101's scene bias
    bg = _background(src, split, preset.size, frames, rng, scene)
    t = np.linspace(0, 1, frames * sub)
    canvas = bg.repeat_interleave(sub, 0)  # (frames*sub, 3, S, S)
    for _ in range(rng.integers(1, 3)):  # clutter: other actors drifting slowly
        other = _actor_sprite(src, split, ACTOR_KINDS[rng.integers(len(ACTOR_KINDS))], rng)
        start, vel = rng.uniform(-0.8, 0.8, 2), rng.normal(0, 0.15, 2)
        canvas = _paste(canvas, other * torch.tensor([1, 1, 1, 0.7]).view(4, 1, 1),
                        start[0] + vel[0] * t, start[1] + vel[1] * t, np.full_like(t, rng.uniform(0.12, 0.2)),
                        rng.uniform(0, 6.3) + 0 * t)
    canvas = _paste(canvas, actor, *_trajectory(cls.motion, t, rng))
    video = canvas.unflatten(0, (frames, sub)).mean(1)  # motion blur from sub-frames
    video = video + torch.from_numpy(rng.normal(0, 0.02, video.shape)).float()
    return (video.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def write_mp4(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """H.264 (yuv420p) mp4 through PyAV, the same bytes in every process.

    x264's SIMD routines gave other bits for the same frames from one process to the next (ASLR off too;
    most likely reads of memory the encoder never wrote, which holds leftovers in a process whose heap was
    used before, as torch's import does). Its plain C routines (``asm=0``) and one thread do not; they cost
    about 10 % of the generation time at the presets' sizes and nothing in file size."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.options = {"crf": "18", "preset": "veryfast", "g": "8", "x264-params": "threads=1:sliced-threads=0:asm=0"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_h264(path: Path, frames, width: int, height: int, fps: int = 25, options: dict | None = None) -> int:
    """Encode an iterable of uint8 ``(H, W, 3)`` frames to an H.264 mp4 one frame at a time (never held whole);
    returns the frame count. ``options``: x264's, default its fastest preset."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options or {"preset": "ultrafast", "crf": "30", "g": str(2 * fps)}
        for n, img in enumerate(frames, 1):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = n - 1
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def write_pattern_video(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> Path:
    """An H.264 mp4 of ``seconds`` at ``width`` x ``height`` (a colour gradient with a sliding block) for
    benchmarks and tests at real sizes."""
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
    base[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    block = height // 8

    def frames():
        for i in range(round(seconds * fps)):
            img = base.copy()
            x = (i * 7) % (width - block)
            img[height // 2 - block // 2:height // 2 + block // 2, x:x + block] = 255
            yield img

    write_h264(path, frames(), width, height, fps)
    return path


def generate(out: str | Path, preset: str | SynthPreset = "quick", seed: int = 0, progress: bool = True) -> dict:
    """Write SynthActions under ``out`` (a preset name or a :class:`SynthPreset`); returns a summary."""
    if isinstance(preset, SynthPreset):
        p, preset = preset, "custom"
    elif preset in PRESETS:
        p = PRESETS[preset]
    else:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading costs more than it gives, and keeps results exact
    try:
        return _generate(out, p, preset, seed, progress, t0)
    finally:
        torch.set_num_threads(threads)


def _generate(out: Path, p: SynthPreset, preset: str, seed: int, progress: bool, t0: float) -> dict:
    from PIL import Image
    from tqdm import tqdm

    src = Sources()
    specs = p.classes()
    names = [c.name for c in specs]
    (out / "classes.txt").write_text("".join(n + "\n" for n in names))
    counts = {"train": p.train_per_class, "val": p.val_per_class, "test": p.test_per_class}
    jobs = [(split, c, i) for split in SPLITS for c in range(len(names)) for i in range(counts[split])]
    jobs += [("stills", c, i) for c in range(len(names)) for i in range(p.stills_per_class)]
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, c, i in tqdm(jobs, desc=f"synth {preset}", disable=not progress, unit="video"):
        name = names[c]
        rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 3, c, i])
        if split == "stills":
            # a separate render (train sources), one blurred frame at a random moment
            video = render(specs[c], "train", src, p, rng, frames=p.frames)
            img = video[rng.integers(p.frames)]
            path = out / "stills" / name / f"{name}_{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            continue
        video = render(specs[c], split, src, p, rng)
        rel = f"videos/{split}/{name}/{name}_{i:04d}.mp4"
        write_mp4(out / rel, video)
        lines[split].append(f"{rel} {c}\n")
    for split in SPLITS:
        (out / f"{split}.txt").write_text("".join(lines[split]))
    summary = {"preset": preset, "design": p.design, "seed": seed, "classes": len(names), "frames": p.frames, "size": p.size,
               "videos": {s: len(lines[s]) for s in SPLITS}, "stills": len(names) * p.stills_per_class,
               "seconds": round(time.time() - t0, 2), "settings": asdict(p)}
    (out / "synth.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "seconds"}, indent=2))
    return summary
