"""Typed configuration: one frozen dataclass per params.yaml section.

params.yaml is the only file a user edits. Every key is declared here with its type, default, a
one-line help text and, where a type cannot say it, the rule its value must follow (the README's
parameter table is generated from these declarations, so they cannot drift). Rules between keys
sit in one list, CROSS_RULES. Loading checks every key: an unknown key, a wrong type or a value
outside what is allowed raises ConfigError naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.schedules import FORMS, is_schedule, parse_schedule

# ----------------------------------------------------------------------------------------------
# Rules: what a value may be, written next to the knob it belongs to


@dataclass(frozen=True)
class Rule:
    """A test on one knob's value, with the words for what passes (errors and README use them)."""

    allowed: str  # what passes, read after "allowed: ", e.g. "a number in (0, 4]"
    test: Callable[[Any], bool]  # True when the value is allowed

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


def schedule_rule(low: float, high: float = math.inf, open_low: bool = False) -> Rule:
    """A schedule knob (see pipeline/core/schedules.py) whose values stay within [low, high]."""

    def test(text: str) -> bool:
        if not is_schedule(text):
            return False
        schedule = parse_schedule(text, "")
        above_low = schedule.lowest > low if open_low else schedule.lowest >= low
        return above_low and schedule.highest <= high

    bound = f"> {low:g}" if open_low else f">= {low:g}"
    bound += f" and <= {high:g}" if high < math.inf else ""
    return satisfies(test, f"values {bound}, written as {FORMS}")


def satisfies(test: Callable[[Any], bool], allowed: str) -> Rule:
    """A custom rule: any predicate, with the wording that describes it."""
    return Rule(allowed, test)


def between(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False,
    what: str = "a number",
) -> Rule:
    """low <= value <= high; an open end excludes its bound (wording: "a number in (0, 4]")."""

    def test(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
    return Rule(f"{what} in {brackets}", test)


def probability(high: float = 1, *, high_open: bool = False) -> Rule:
    """A chance: 0 <= value <= high (or < high when high_open)."""
    return between(0, high, high_open=high_open, what="a probability")


def at_least(low: float) -> Rule:
    """value >= low (a 0 here usually means off, auto or all: the help says which)."""
    return Rule(f"{low} or more", lambda value: value >= low)


def above(low: float) -> Rule:
    """value > low, strictly."""
    return Rule(f"a number > {low}", lambda value: value > low)


def one_of(*choices: Any) -> Rule:
    """value is one of a few values that a type cannot list (e.g. image sides)."""
    words = [repr(c) if isinstance(c, str) else str(c) for c in choices]
    wording = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    return Rule(wording, lambda value: value in choices)


def knob(default: Any, help: str, check: Rule | None = None) -> Any:
    """A config field with its help text and optional rule (both shown in the README)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    if check is not None and not check(default):
        raise ValueError(f"default {default!r} breaks its own rule: {check.allowed}")
    return field(default=default, metadata={"help": help, "check": check})


# The op names of pipeline.gan.diffaug.OPS (not imported: config stays free of torch).
DIFFAUGMENT_OPS = ("color", "translation", "cutout")
SIDES = (28, 32, 64, 128, 256)  # image sides the models build (28: the MNIST teaching mode)

ModelName = Literal["mlp", "dcgan", "stylegan2", "fastgan", "r3gan"]
LossName = Literal[
    "minimax", "nonsaturating", "lsgan", "ralsgan", "hinge", "wgan-gp", "rpgan"
]
Device = Literal["auto", "cpu", "cuda"]


def _diffaugment_ops_known(text: str) -> bool:
    return all(op.strip() in DIFFAUGMENT_OPS for op in text.split(",") if op.strip())


@dataclass(frozen=True)
class FetchConfig:
    source: str = knob(
        "builtin:fluent-emoji-3d",
        "where images come from: builtin:fluent-emoji-3d | builtin:fashion-mnist | "
        "builtin:mnist | dir:PATH | zip:PATH | kaggle:OWNER/SLUG[@VERSION] | "
        "kaggle-competition:NAME",
    )
    limit: int = knob(0, "keep only the first N images by name (0 = all); for quick trials")


@dataclass(frozen=True)
class CropConfig:
    method: Literal["alpha", "none", "yolo"] = knob(
        "alpha",
        "alpha: crop transparent cut-outs to their opaque extent; none: pass through; "
        "yolo: keep the largest confident detection of `classes`",
    )
    alpha_threshold: int = knob(
        8, "alpha (0-255) above which a pixel counts as opaque", check=between(0, 255))
    margin: float = knob(
        0.05, "extra border around the crop, as a fraction of its size", check=between(0, 1))
    weights: str = knob(
        "yolo11n.pt", "YOLO weights: a local .pt (relative to the project root) or an "
        "ultralytics COCO model name, downloaded there when online. A .pt file is code "
        "(loading it unpickles): use weights from a place you trust"
    )
    weights_sha256: str = knob(
        "", "sha256 the crop.weights file must have before it is loaded ('' = not checked); "
        "`sha256sum yolo11n.pt` on a machine you trust",
        check=satisfies(lambda text: text == "" or (
            len(text) == 64 and all(c in "0123456789abcdef" for c in text)),
            "'' or 64 lowercase hex digits"))
    classes: tuple[str, ...] = knob(("clock",), "COCO class names to keep (clock, motorcycle...)")
    conf: float = knob(0.25, "detection confidence threshold", check=between(0, 1))
    max_objects: int = knob(
        1, "reject pictures with more confident objects than this", check=at_least(1))
    min_box: float = knob(
        0.1, "reject when the largest box's longer side is below this fraction of the image's "
        "shorter side", check=between(0, 1, high_open=True)
    )
    square: bool = knob(True, "expand the crop to a square around the object when possible")
    batch_size: int = knob(16, "images per YOLO inference batch", check=at_least(1))
    reject_list: str = knob("", "file of names to drop by hand, one a line ('' = none)")


@dataclass(frozen=True)
class PadConfig:
    size: int = knob(
        128, "output side in pixels: 32, 64, 128 or 256 (28 for the MNIST teaching mode)",
        check=one_of(*SIDES))
    mode: Literal["letterbox", "resize", "center-crop"] = knob(
        "letterbox", "letterbox keeps the whole object on a background (seed 004: best FID)"
    )
    background: tuple[int, int, int] = knob(
        (0, 0, 0), "RGB background for letterbox and alpha",
        check=satisfies(lambda rgb: all(0 <= c <= 255 for c in rgb), "3 values in 0..255"))
    min_side: int = knob(16, "reject images whose shorter side is below this many pixels")
    max_aspect: float = knob(
        5.0, "reject images more elongated than this ratio", check=at_least(1))
    max_pixels: int = knob(50_000_000, "reject larger images as decompression bombs")
    dedupe: bool = knob(True, "drop exact and near duplicates, keeping the first by name")
    near_duplicate_bits: int = knob(
        4, "perceptual-hash distance (of 64 bits) that counts as near", check=between(0, 64))
    workers: int = knob(0, "decode/encode processes (0 = one per CPU core)", check=at_least(0))


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = knob(True, "add a mirrored copy of every image (safe: does not leak)")
    rotations: tuple[float, ...] = knob(
        (), "extra copies rotated by these degrees (leaks filled corners into G; keep small)",
        check=satisfies(lambda angles: all(-45 <= a <= 45 for a in angles),
                        "degrees in [-45, 45]"),
    )
    grey: bool = knob(False, "store one grey channel instead of RGB (MNIST teaching mode)")
    size: int = knob(
        0, "side of the training images (0 = pad.size); half the side is about a quarter of "
        "the training compute, and generate upsamples G's images back to pad.size; above "
        "pad.size, each image is centred on a band of pad.background (for a family whose "
        "smallest side is above the data's: fastgan at 32 for 28-px Fashion-MNIST) and "
        "generate crops the centre back",
        check=one_of(0, *SIDES))


@dataclass(frozen=True)
class TrainConfig:
    model: ModelName = knob("dcgan", "network family: " + " | ".join(get_args(ModelName)))
    loss: LossName = knob("ralsgan", "GAN loss: " + " | ".join(get_args(LossName)))
    seed: int = knob(0, "random seed (weights, noise, data order)")
    kimg: float = knob(
        40.0, "training length in thousands of real images shown to D", check=above(0))
    minutes: float = knob(
        0.0, "stop after this many minutes (a Kaggle kernel's limit) even before kimg (0 = none)",
        check=at_least(0),
    )
    budget_minutes: float = knob(
        0.0, "minutes for training plus generating and zipping generate.count images (0 = "
        "none): training stops early enough for the rest to fit (a kernel's time limit)",
        check=at_least(0))
    resume_from: str = knob(
        "", "a run folder (data/runs/<run>) or checkpoints folder from elsewhere, read-only "
        "allowed, to continue from when this run has no checkpoint of its own ('' = none)")
    batch_size: int = knob(64, "images per step (global, over all GPUs)", check=at_least(2))
    width: float = knob(
        0.25, "channel multiplier; 1.0 is the seeds' DCGAN-128 (13.3M/2.8M)",
        check=between(0, 4, low_open=True))
    d_width: float = knob(
        0.0, "discriminator's channel multiplier when it should differ from width (0 = width; "
        "stylegan2 sizes both by channel_base): a narrower D leaves more of a CPU to G",
        check=between(0, 4))
    nz: int = knob(128, "latent size", check=at_least(1))
    lr_g: float = knob(0.0008, "generator Adam learning rate (seed 004: 8e-4)", check=above(0))
    lr_d: float = knob(
        0.0008, "discriminator Adam learning rate (seed 004: 8e-4)", check=above(0))
    beta1: float = knob(0.5, "Adam beta1 (seeds: 0.5)", check=between(0, 1, high_open=True))
    beta2: float = knob(0.999, "Adam beta2", check=between(0, 1, high_open=True))
    real_label: float = knob(
        1.0, "target for reals; <1 gives soft labels (seed 004: 0.8)",
        check=between(0, 1, low_open=True))
    ema_kimg: float = knob(
        0.0, "G EMA half-life in kimg (0 = no EMA; generate uses raw G)", check=at_least(0))
    checkpoint_kimg: float = knob(
        4.0, "write a resumable checkpoint every this many kimg", check=above(0))
    snapshot_kimg: float = knob(
        4.0, "write a sample grid from fixed noise every this many kimg", check=above(0))
    keep_checkpoints: int = knob(2, "how many recent checkpoints to keep", check=at_least(1))
    device: Device = knob("auto", "auto = CUDA when present (AMP, TF32), else CPU")
    threads: int = knob(0, "CPU threads for torch (0 = torch's default)", check=at_least(0))
    amp: Literal["auto", "off", "bf16", "fp16"] = knob(
        "auto", "mixed precision: auto = bf16 on CUDA (fp16 + loss scaling on old GPUs); on a "
        "CPU, bf16 where it is native (AVX-512-BF16, AMX) and measured faster, else off, and "
        "the memory layout measured faster; off/bf16/fp16: as written, nothing timed"
    )
    sync_batchnorm: bool = knob(
        True, "under DDP, BatchNorm uses the whole global batch's statistics, as one GPU would "
        "(SyncBatchNorm); false: each rank normalises its own share, faster on many GPUs but a "
        "different model from the one-GPU run")
    deterministic: bool = knob(False, "bit-reproducible kernels (slower on CUDA; CPU already is)")
    tick_kimg: float = knob(
        1.0, "kimg between progress ticks (one stats.jsonl line per tick)", check=above(0))
    ema_rampup: float = knob(
        0.05, "EMA half-life at most this fraction of images seen (0 = none)", check=at_least(0))
    label_flip: float = knob(
        0.0, "chance to swap a real and a fake in D's batch (seed 000: .1)",
        check=probability(0.5, high_open=True))
    instance_noise: float = knob(
        0.0, "std of Gaussian noise on D's inputs, [-1, 1] units (0 off)", check=at_least(0))
    instance_noise_kimg: float = knob(
        10.0, "kimg over which instance noise falls linearly to 0", check=above(0))
    diffaugment: str = knob(
        "", "DiffAugment on reals and fakes: color,translation,cutout ('' off)",
        check=satisfies(_diffaugment_ops_known,
                        "comma-separated ops from " + ", ".join(DIFFAUGMENT_OPS) + " ('' = off)"),
    )
    augment_p: float = knob(
        1.0, "DiffAugment probability per image and op (when ada_target is 0)",
        check=probability())
    ada_target: float = knob(
        0.0, "adapt p so E[sign D(reals)] stays near this (ADA 0.6, 0 fixed)",
        check=between(0, 1, high_open=True))
    ada_kimg: float = knob(
        100.0, "kimg for the adaptive p to travel from 0 to 1 (ADA: 500)", check=above(0))
    collapse_ratio: float = knob(
        0.25,
        "warn when the fixed-noise samples' diversity falls below this fraction of the real "
        "images' diversity (mode collapse; 0 = off)",
        check=between(0, 1, high_open=True),
    )
    d_head: Literal["global", "patch"] = knob(
        "global", "DCGAN D output: global (one logit an image) or patch (PatchGAN: a logit a patch)"
    )
    recon_size: int = knob(
        0, "FastGAN only: side (px) of D's reconstructions of the whole image and of a quarter "
        "(0 = the paper's min(size, 128) and min(size/2, 128); 16 at 64 px: 1.45x faster steps)",
        check=at_least(0))
    recon_interval: int = knob(
        1, "FastGAN only: D's reconstruction loss every N D steps, weighted xN (lazy, as "
        "reg_interval; 1 = every step, the paper; 2 saves ~10% of a CPU step)",
        check=at_least(1))
    recon_weight: float = knob(
        1.0, "FastGAN only: weight of D's reconstruction loss (MSE here, where the paper's is "
        "LPIPS, weight 1; 0 = off, the decoders never run)",
        check=at_least(0))
    # StyleGAN2 only (model: stylegan2); mlp and dcgan ignore these.
    w_dim: int = knob(128, "StyleGAN2 intermediate latent (w) size", check=at_least(1))
    mapping_layers: int = knob(
        2, "StyleGAN2 mapping network depth (z -> w); ADA uses 2", check=between(1, 8))
    channel_base: int = knob(
        4096, "StyleGAN2 channels at an r x r map = channel_base / r ...", check=at_least(32))
    channel_max: int = knob(
        128, "... capped at channel_max (paper, on a GPU: 16384 and 512)", check=at_least(1))
    style_mixing: float = knob(
        0.9, "StyleGAN2 probability of mixing two latents per batch", check=probability())
    r1_gamma: float = knob(
        1.0, "R1 penalty weight on reals, for families that accept it (stylegan2, r3gan; 0 = off)",
        check=at_least(0))
    r2_gamma: float = knob(
        0.0, "R2 penalty weight on fakes, for families that accept it (r3gan; 0 = off)",
        check=at_least(0))
    reg_interval: int = knob(
        16, "lazy R1/R2: penalise every N D steps, weighted xN (1 = every step, as R3GAN)",
        check=at_least(1))
    lr_decay: str | float = knob(
        "1", "multiplier on lr_g and lr_d over training: a number, 'A->B@KIMG' (linear) or "
        "'cos:A->B@KIMG' (cosine; R3GAN anneals lr 4x)", check=schedule_rule(low=0, open_low=True))
    gamma_decay: str | float = knob(
        "1", "multiplier on r1_gamma and r2_gamma over training (same forms; R3GAN: 10x down)",
        check=schedule_rule(low=0))
    augment_p_decay: str | float = knob(
        "1", "multiplier on augment_p over training when ada_target is 0 (same forms)",
        check=schedule_rule(low=0, high=1))
    eval_kimg: float = knob(
        0.0, "score the generator every this many kimg (KID and FID of eval_n samples against "
        "data/clean) and keep the best snapshot for generate (0 = off)", check=at_least(0))
    eval_n: int = knob(
        500, "samples scored per evaluation (KID is unbiased at small n; FID is biased up)",
        check=at_least(10))
    eval_reference_n: int = knob(
        1000, "reference images (data/clean, evenly spread by name) the evaluations compare "
        "with; 0 = all (their Inception features cost a CPU ~0.08 s an image, once a run)",
        check=at_least(0))
    eval_precision: Literal["auto", "fp32", "bf16"] = knob(
        "auto", "Inception's precision in these evaluations: auto = bf16 where the CPU "
        "(AVX-512-BF16, AMX) or the GPU computes it natively (2x faster on a CPU; the snapshots "
        "rank alike, bench/RESULTS.md), else fp32. make fid always scores in fp32")
    pl_weight: float = knob(
        0.0, "path-length regularisation weight (StyleGAN2; 0 = off, ref 2)", check=at_least(0))


# train keys that do not change what is trained, only how long, how often it is logged, saved or
# scored, and on how many threads: changing them continues the same run folder.
BOOKKEEPING_KEYS = ("kimg", "minutes", "budget_minutes", "resume_from", "eval_kimg", "eval_n",
                    "eval_reference_n", "eval_precision",
                    "checkpoint_kimg", "tick_kimg", "snapshot_kimg", "keep_checkpoints", "threads",
                    "collapse_ratio")


@dataclass(frozen=True)
class GenerateConfig:
    count: int = knob(
        10_000, "number of PNGs to generate (competitions want 10,000)", check=at_least(1))
    batch_size: int = knob(250, "images per generator forward pass", check=at_least(1))
    snapshot: str | float = knob(
        "best", "which generator: best (lowest KID of train.eval_kimg evaluations; the last one "
        "when evaluation is off), last, or a kimg at which an evaluation ran (e.g. '40')",
        check=satisfies(lambda v: v in ("best", "last") or _is_number(v),
                        "best, last or a kimg number"))
    truncation: float = knob(
        1.0, "truncation psi (StyleGAN2 only; 1 = none)", check=between(0, 1))
    workers: int = knob(0, "PNG encoding processes (0 = one per CPU core)", check=at_least(0))
    device: Device = knob("auto", "auto = CUDA when present, else CPU")


@dataclass(frozen=True)
class PackageConfig:
    name: str = knob(
        "images.zip", "file name of the submission under submissions/",
        check=satisfies(lambda name: name.endswith(".zip") and "/" not in name,
                        "a file name.zip"))
    size: int = knob(
        0, "required image side in the zip (0 = pad.size)", check=one_of(0, *SIDES))
    keep_history: int = knob(
        20, "published zips kept in submissions/history/ (0 = all)", check=at_least(0))
    submit: bool = knob(False, "submit the zip with the kaggle client after validating it")
    competition: str = knob("", "Kaggle competition to submit to when submit is true")
    message: str = knob("gan-pipeline submission", "submission message")
    mode: Literal["RGB", "L"] = knob("RGB", "image mode required in the zip: RGB (competitions) "
                                     "or L (grey, e.g. MNIST models)")


@dataclass(frozen=True)
class ScoreConfig:
    n: int = knob(
        2048,
        "generated images scored, the first ones by name (0 = all); 2,048 keeps the CPU default "
        "under 15 minutes, use 10,000 on a GPU as the competition does",
        check=at_least(0),
    )
    reference: str = knob("", "reference folder or .npz of statistics ('' = data/clean)")
    reference_n: int = knob(
        0, "reference images used, first by name (0 = all)", check=at_least(0))
    batch_size: int = knob(
        50, "images per Inception forward pass (does not change the score)", check=at_least(1))
    device: Device = knob("auto", "auto = CUDA when present, else CPU")
    workers: int = knob(0, "decoding processes (0 = one per CPU core)", check=at_least(0))
    kid_subsets: int = knob(
        100, "KID: random subsets averaged (the spread gives kid_std)", check=at_least(1))
    kid_subset_size: int = knob(
        0, "KID: images per subset (0 = 1,000 capped by the smaller set)",
        check=satisfies(lambda v: v == 0 or v >= 2, "0 (auto) or 2 or more"))
    pr_k: int = knob(
        3, "precision/recall: k of the k-nearest-neighbour manifolds", check=at_least(1))


@dataclass(frozen=True)
class Params:
    """The whole params.yaml: one attribute per stage section."""

    fetch: FetchConfig = field(default_factory=FetchConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    pad: PadConfig = field(default_factory=PadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    package: PackageConfig = field(default_factory=PackageConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Params)}
# `from __future__ import annotations` makes f.type a string; resolve it once.
SECTIONS = {name: typing.get_type_hints(Params)[name] for name in SECTIONS}


# ----------------------------------------------------------------------------------------------
# Rules between knobs: declared once here, checked once after every section has loaded


@dataclass(frozen=True)
class CrossRule:
    """A rule that ties knobs together; an error blames the first key and quotes the others."""

    keys: tuple[str, ...]  # "section.key" names; keys[0] is the one blamed
    allowed: str  # what keys[0] may be, read after "allowed: "
    test: Callable[..., bool]  # called with the keys' values, in order; True when allowed


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule(("package.competition", "package.submit"),
              "a competition name when package.submit is true",
              lambda competition, submit: bool(competition) or not submit),
    CrossRule(("package.size", "pad.size"),
              "0 or pad.size (the zip holds the images pad made; checked before training)",
              lambda size, pad_size: size in (0, pad_size)),
    CrossRule(("augment.size", "pad.size"),
              "0, at most pad.size (downscaled), or above it but below twice pad.size (a "
              "centred band, cropped back by generate: 32 for 28-px data and fastgan)",
              lambda size, pad_size: size < 2 * pad_size),
    CrossRule(("score.kid_subset_size", "score.n"),
              "0 (auto) or at most score.n when score.n > 0 (KID subsets come from the scored "
              "images)",
              lambda subset_size, n: n == 0 or subset_size <= n),
)


def check_cross_rules(params: Params, origins: dict[str, str]) -> None:
    """Raise ConfigError for the first broken CROSS_RULES entry; origins maps section -> file."""
    for rule in CROSS_RULES:
        dotted = [key.split(".") for key in rule.keys]
        values = [getattr(getattr(params, section), key) for section, key in dotted]
        if not rule.test(*values):
            others = ", ".join(f"{key} is {value!r}"
                               for key, value in zip(rule.keys[1:], values[1:]))
            raise ConfigError(f"{origins[dotted[0][0]]}: '{rule.keys[0]}' is {values[0]!r}; "
                              f"allowed: {rule.allowed} (here {others})")


# ----------------------------------------------------------------------------------------------
# Value checking


def _describe(tp: Any) -> str:
    """Human wording of an allowed type, for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return "a list of " + ", ".join(_describe(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ValueError. Never guesses across kinds."""
    origin = get_origin(tp)
    if origin is Literal:
        # YAML 1.1 reads an unquoted off / on (and no / yes) as a boolean: `amp: off` means "off".
        if isinstance(value, bool) and ("on" if value else "off") in get_args(tp):
            return "on" if value else "off"
        if value in get_args(tp):
            return value
        raise ValueError
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg)
            except ValueError:
                pass
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError
    if tp is type(None):
        if value is None:
            return None
        raise ValueError
    raise TypeError(f"unsupported config type {tp}")


def build_section(section: str, raw: dict[str, Any], origin: str) -> Any:
    """Build one section's dataclass from a mapping, checking every key and value."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(
                f"{origin}: unknown key '{section}.{key}' (value {value!r}); "
                f"allowed keys in '{section}': {', '.join(allowed)}"
            )
        try:
            values[key] = _coerce(value, hints[key])
        except ValueError:
            raise ConfigError(
                f"{origin}: '{section}.{key}' is {value!r}; allowed: {_describe(hints[key])}"
            ) from None
    config = cls(**values)
    for item in dataclasses.fields(cls):
        rule, value = item.metadata["check"], getattr(config, item.name)
        if rule is not None and not rule(value):
            raise ConfigError(f"{origin}: '{section}.{item.name}' is {value!r}; "
                              f"allowed: {rule.allowed}")
    return config


# ----------------------------------------------------------------------------------------------
# Loading params.yaml with overrides


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value` (value in YAML syntax) into its three parts."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.seed=3")
    dotted, raw_value = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(
            f"--set {text!r}: key must be section.key with section one of {', '.join(SECTIONS)}"
        )
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({error})") from None
    return parts[0], parts[1], value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last one silently: a second `train:` would replace the whole section.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:{line}: '{key}' appears twice (first on line "
                                  f"{seen[key]}); merge the two into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely, refusing duplicate keys; errors name the file (and line)."""
    loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    finally:
        loader.dispose()


def load_params(path: Path, overrides: typing.Sequence[str] = (),
                must_exist: bool = False) -> Params:
    """Load params.yaml (missing sections take their defaults), then apply `--set` overrides.

    `must_exist`: a file the user named (--params, PARAMS=) must be there; only the project's
    own params.yaml may be absent (all defaults).
    """
    raw: dict[str, Any] = {}
    if must_exist and not path.is_file():
        raise ConfigError(f"{path}: no such params file (check --params / PARAMS=); nothing "
                          "was run")
    if path.exists():
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for section, body in raw.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{path}: unknown section '{section}'; allowed: {', '.join(SECTIONS)}"
            )
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping of keys")
    merged = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    origins = {name: str(path) for name in SECTIONS}
    for text in overrides:  # an error names every override of its section (one may be to blame)
        section, key, value = parse_override(text)
        merged[section][key] = value
        origins[section] += f"{' with' if origins[section] == str(path) else ''} --set {text}"
    params = Params(**{name: build_section(name, merged[name], origins[name])
                       for name in SECTIONS})
    check_cross_rules(params, origins)
    return params


def canonical(section_config: Any) -> str:
    """Canonical JSON of a section: the part of a stage fingerprint that params contribute."""
    return json.dumps(dataclasses.asdict(section_config), sort_keys=True, separators=(",", ":"))


def allowed_wording(section: str, key: str) -> str:
    """Everything a key's value must satisfy beyond its type ('' when nothing), in words."""
    rule = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[key].metadata["check"]
    parts = [rule.allowed] if rule is not None else []
    parts += [cross.allowed for cross in CROSS_RULES if cross.keys[0] == f"{section}.{key}"]
    return "; ".join(parts)


def section_doc(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for one section: the source of the README table.

    The help ends with "Allowed: ..." where a rule limits the value beyond its type.
    """
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        allowed = allowed_wording(section, f.name)
        help_text = f.metadata["help"]
        if allowed:
            help_text += (" " if help_text.endswith(".") else ". ") + f"Allowed: {allowed}"
        rows.append((f.name, _describe(hints[f.name]), json.dumps(default), help_text))
    return rows
