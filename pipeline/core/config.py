"""Typed configuration: one frozen dataclass per params.yaml section.

params.yaml is the only file a user edits. Every key is declared here with its type, default and a
one-line help text (the README's parameter table is generated from these declarations, so they
cannot drift). Loading checks every key: an unknown key, a wrong type or a value outside what is
allowed raises ConfigError naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from pipeline.core.errors import ConfigError


def knob(default: Any, help: str) -> Any:
    """A config field with its help text (shown in the README and in `params` output)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    return field(default=default, metadata={"help": help})


ModelName = Literal["mlp", "dcgan", "stylegan2"]
LossName = Literal["minimax", "nonsaturating", "lsgan", "ralsgan", "hinge", "wgan-gp"]
Device = Literal["auto", "cpu", "cuda"]


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
    alpha_threshold: int = knob(8, "alpha (0-255) above which a pixel counts as opaque")
    margin: float = knob(0.05, "extra border around the crop, as a fraction of its size")
    weights: str = knob(
        "yolo11n.pt", "YOLO weights: a local .pt (relative to the project root) or an "
        "ultralytics COCO model name, downloaded there when online"
    )
    classes: tuple[str, ...] = knob(("clock",), "COCO class names to keep (clock, motorcycle...)")
    conf: float = knob(0.25, "detection confidence threshold")
    max_objects: int = knob(1, "reject pictures with more confident objects than this")
    min_box: float = knob(
        0.1, "reject when the largest box's longer side is below this fraction of the image's "
        "shorter side"
    )
    square: bool = knob(True, "expand the crop to a square around the object when possible")
    batch_size: int = knob(16, "images per YOLO inference batch")
    reject_list: str = knob("", "file of names to drop by hand, one a line ('' = none)")


@dataclass(frozen=True)
class PadConfig:
    size: int = knob(
        128, "output side in pixels: 32, 64, 128 or 256 (28 for the MNIST teaching mode)")
    mode: Literal["letterbox", "resize", "center-crop"] = knob(
        "letterbox", "letterbox keeps the whole object on a background (seed 004: best FID)"
    )
    background: tuple[int, int, int] = knob((0, 0, 0), "RGB background for letterbox and alpha")
    min_side: int = knob(16, "reject images whose shorter side is below this many pixels")
    max_aspect: float = knob(5.0, "reject images more elongated than this ratio")
    max_pixels: int = knob(50_000_000, "reject larger images as decompression bombs")
    dedupe: bool = knob(True, "drop exact and near duplicates, keeping the first by name")
    near_duplicate_bits: int = knob(4, "perceptual-hash distance (of 64 bits) that counts as near")
    workers: int = knob(0, "decode/encode processes (0 = one per CPU core)")


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = knob(True, "add a mirrored copy of every image (safe: does not leak)")
    rotations: tuple[float, ...] = knob(
        (), "extra copies rotated by these degrees (leaks filled corners into G; keep small)"
    )
    grey: bool = knob(False, "store one grey channel instead of RGB (MNIST teaching mode)")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelName = knob("dcgan", "network family: mlp | dcgan | stylegan2")
    loss: LossName = knob("ralsgan", "GAN loss: " + " | ".join(get_args(LossName)))
    seed: int = knob(0, "random seed (weights, noise, data order)")
    kimg: float = knob(40.0, "training length in thousands of real images shown to D")
    minutes: float = knob(
        0.0, "stop after this many minutes (a Kaggle kernel's limit) even before kimg (0 = none)"
    )
    batch_size: int = knob(64, "images per step (global, over all GPUs)")
    width: float = knob(0.25, "channel multiplier; 1.0 is the seeds' DCGAN-128 (13.3M/2.8M)")
    nz: int = knob(128, "latent size")
    lr_g: float = knob(0.0008, "generator Adam learning rate (seed 004: 8e-4)")
    lr_d: float = knob(0.0008, "discriminator Adam learning rate (seed 004: 8e-4)")
    beta1: float = knob(0.5, "Adam beta1 (seeds: 0.5)")
    beta2: float = knob(0.999, "Adam beta2")
    real_label: float = knob(1.0, "target for reals; <1 gives soft labels (seed 004: 0.8)")
    ema_kimg: float = knob(0.0, "G EMA half-life in kimg (0 = no EMA; generate uses raw G)")
    checkpoint_kimg: float = knob(4.0, "write a resumable checkpoint every this many kimg")
    snapshot_kimg: float = knob(4.0, "write a sample grid from fixed noise every this many kimg")
    keep_checkpoints: int = knob(2, "how many recent checkpoints to keep")
    device: Device = knob("auto", "auto = CUDA when present (AMP, TF32), else CPU")
    threads: int = knob(0, "CPU threads for torch (0 = torch's default)")
    amp: Literal["auto", "off", "bf16", "fp16"] = knob(
        "auto", "mixed precision: auto = bf16 on CUDA (fp16 + loss scaling on old GPUs), off on CPU"
    )
    deterministic: bool = knob(False, "bit-reproducible kernels (slower on CUDA; CPU already is)")
    tick_kimg: float = knob(1.0, "kimg between progress ticks (one stats.jsonl line per tick)")
    ema_rampup: float = knob(0.05, "EMA half-life at most this fraction of images seen (0 = none)")
    label_flip: float = knob(0.0, "chance to swap a real and a fake in D's batch (seed 000: .1)")
    instance_noise: float = knob(0.0, "std of Gaussian noise on D's inputs, [-1, 1] units (0 off)")
    instance_noise_kimg: float = knob(10.0, "kimg over which instance noise falls linearly to 0")
    diffaugment: str = knob("", "DiffAugment on reals and fakes: color,translation,cutout ('' off)")
    augment_p: float = knob(1.0, "DiffAugment probability per image and op (when ada_target is 0)")
    ada_target: float = knob(0.0, "adapt p so E[sign D(reals)] stays near this (ADA 0.6, 0 fixed)")
    ada_kimg: float = knob(100.0, "kimg for the adaptive p to travel from 0 to 1 (ADA: 500)")
    collapse_ratio: float = knob(
        0.25, "warn when fixed-noise sample diversity falls below this fraction of its best (0 off)"
    )
    d_head: Literal["global", "patch"] = knob(
        "global", "DCGAN D output: global (one logit an image) or patch (PatchGAN: a logit a patch)"
    )
    # StyleGAN2 only (model: stylegan2); mlp and dcgan ignore these.
    w_dim: int = knob(128, "StyleGAN2 intermediate latent (w) size")
    mapping_layers: int = knob(2, "StyleGAN2 mapping network depth (z -> w); ADA uses 2")
    channel_base: int = knob(4096, "StyleGAN2 channels at an r x r map = channel_base / r ...")
    channel_max: int = knob(128, "... capped at channel_max (paper, on a GPU: 16384 and 512)")
    style_mixing: float = knob(0.9, "StyleGAN2 probability of mixing two latents per batch")
    r1_gamma: float = knob(1.0, "R1 penalty weight on reals (StyleGAN2; 0 = off)")
    pl_weight: float = knob(0.0, "path-length regularisation weight (StyleGAN2; 0 = off, ref 2)")


@dataclass(frozen=True)
class GenerateConfig:
    count: int = knob(10_000, "number of PNGs to generate (competitions want 10,000)")
    batch_size: int = knob(250, "images per generator forward pass")
    truncation: float = knob(1.0, "truncation psi (StyleGAN2 only; 1 = none)")
    workers: int = knob(0, "PNG encoding processes (0 = one per CPU core)")
    device: Device = knob("auto", "auto = CUDA when present, else CPU")


@dataclass(frozen=True)
class PackageConfig:
    name: str = knob("images.zip", "file name of the submission under submissions/")
    size: int = knob(0, "required image side in the zip (0 = pad.size)")
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
    )
    reference: str = knob("", "reference folder or .npz of statistics ('' = data/clean)")
    reference_n: int = knob(0, "reference images used, first by name (0 = all)")
    batch_size: int = knob(50, "images per Inception forward pass (does not change the score)")
    device: Device = knob("auto", "auto = CUDA when present, else CPU")
    workers: int = knob(0, "decoding processes (0 = one per CPU core)")
    kid_subsets: int = knob(100, "KID: random subsets averaged (the spread gives kid_std)")
    kid_subset_size: int = knob(1000, "KID: images per subset (capped by the smaller set)")
    pr_k: int = knob(3, "precision/recall: k of the k-nearest-neighbour manifolds")


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
    validate_section(section, config, origin)
    return config


def validate_section(section: str, config: Any, origin: str) -> None:
    """Range checks that a type cannot express."""

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = getattr(config, key)
            raise ConfigError(f"{origin}: '{section}.{key}' is {value!r}; allowed: {allowed}")

    if section == "pad":
        need(config.size in (28, 32, 64, 128, 256), "size", "28, 32, 64, 128 or 256")
        need(all(0 <= c <= 255 for c in config.background), "background", "3 values in 0..255")
        need(config.max_aspect >= 1, "max_aspect", "a number >= 1")
        need(0 <= config.near_duplicate_bits <= 64, "near_duplicate_bits", "0..64")
        need(config.workers >= 0, "workers", "0 (auto) or more")
    elif section == "crop":
        need(0 <= config.alpha_threshold <= 255, "alpha_threshold", "0..255")
        need(0 <= config.conf <= 1, "conf", "a number in [0, 1]")
        need(config.max_objects >= 1, "max_objects", "1 or more")
        need(0 <= config.min_box < 1, "min_box", "a number in [0, 1)")
        need(0 <= config.margin <= 1, "margin", "a number in [0, 1]")
        need(config.batch_size >= 1, "batch_size", "1 or more")
    elif section == "augment":
        need(all(-45 <= r <= 45 for r in config.rotations), "rotations", "degrees in [-45, 45]")
    elif section == "train":
        need(config.kimg > 0, "kimg", "a number > 0")
        need(config.minutes >= 0, "minutes", "0 (no limit) or more")
        need(config.batch_size >= 2, "batch_size", "2 or more")
        need(0 < config.width <= 4, "width", "a number in (0, 4]")
        need(config.nz >= 1, "nz", "1 or more")
        need(config.lr_g > 0, "lr_g", "a number > 0")
        need(config.lr_d > 0, "lr_d", "a number > 0")
        need(0 <= config.beta1 < 1, "beta1", "a number in [0, 1)")
        need(0 <= config.beta2 < 1, "beta2", "a number in [0, 1)")
        need(0 < config.real_label <= 1, "real_label", "a number in (0, 1]")
        need(config.ema_kimg >= 0, "ema_kimg", "0 (off) or more")
        need(config.checkpoint_kimg > 0, "checkpoint_kimg", "a number > 0")
        need(config.snapshot_kimg > 0, "snapshot_kimg", "a number > 0")
        need(config.keep_checkpoints >= 1, "keep_checkpoints", "1 or more")
        need(config.threads >= 0, "threads", "0 (default) or more")
        need(config.tick_kimg > 0, "tick_kimg", "a number > 0")
        need(config.ema_rampup >= 0, "ema_rampup", "0 (off) or more")
        need(0 <= config.label_flip < 0.5, "label_flip", "a probability in [0, 0.5)")
        need(config.instance_noise >= 0, "instance_noise", "0 (off) or more")
        need(config.instance_noise_kimg > 0, "instance_noise_kimg", "a number > 0")
        # The op names of pipeline.gan.diffaug.OPS (not imported: config stays free of torch).
        need(all(op.strip() in ("color", "translation", "cutout")
                 for op in config.diffaugment.split(",") if op.strip()),
             "diffaugment", "comma-separated ops from color, translation, cutout ('' = off)")
        need(0 <= config.augment_p <= 1, "augment_p", "a probability in [0, 1]")
        need(0 <= config.ada_target < 1, "ada_target", "a number in [0, 1) (0 = fixed p)")
        need(config.ada_kimg > 0, "ada_kimg", "a number > 0")
        need(0 <= config.collapse_ratio < 1, "collapse_ratio", "a number in [0, 1) (0 = off)")
        need(config.w_dim >= 1, "w_dim", "1 or more")
        need(1 <= config.mapping_layers <= 8, "mapping_layers", "1..8")
        need(config.channel_base >= 32, "channel_base", "32 or more")
        need(config.channel_max >= 1, "channel_max", "1 or more")
        need(0 <= config.style_mixing <= 1, "style_mixing", "a probability in [0, 1]")
        need(config.r1_gamma >= 0, "r1_gamma", "0 (off) or more")
        need(config.pl_weight >= 0, "pl_weight", "0 (off) or more")
    elif section == "generate":
        need(config.count >= 1, "count", "1 or more")
        need(config.batch_size >= 1, "batch_size", "1 or more")
        need(0 <= config.truncation <= 1, "truncation", "a number in [0, 1]")
        need(config.workers >= 0, "workers", "0 (auto) or more")
    elif section == "package":
        need(config.name.endswith(".zip") and "/" not in config.name, "name", "a file name.zip")
        need(config.size in (0, 28, 32, 64, 128, 256), "size", "0, 28, 32, 64, 128 or 256")
        need(not config.submit or bool(config.competition), "competition",
             "a competition name when package.submit is true")
    elif section == "score":
        need(config.n >= 0, "n", "0 (all) or more")
        need(config.reference_n >= 0, "reference_n", "0 (all) or more")
        need(config.batch_size >= 1, "batch_size", "1 or more")
        need(config.workers >= 0, "workers", "0 (auto) or more")
        need(config.kid_subsets >= 1, "kid_subsets", "1 or more")
        need(config.kid_subset_size >= 2, "kid_subset_size", "2 or more")
        need(config.pr_k >= 1, "pr_k", "1 or more")


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


def load_params(path: Path, overrides: typing.Sequence[str] = ()) -> Params:
    """Load params.yaml (missing sections take their defaults), then apply `--set` overrides."""
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
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
    for text in overrides:
        section, key, value = parse_override(text)
        merged[section][key] = value
        origins[section] = f"{path} with --set {text}"
    return Params(**{name: build_section(name, merged[name], origins[name]) for name in SECTIONS})


def canonical(section_config: Any) -> str:
    """Canonical JSON of a section: the part of a stage fingerprint that params contribute."""
    return json.dumps(dataclasses.asdict(section_config), sort_keys=True, separators=(",", ":"))


def section_doc(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for one section: the source of the README table."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        rows.append((f.name, _describe(hints[f.name]), json.dumps(default), f.metadata["help"]))
    return rows
