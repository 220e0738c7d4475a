"""Values that change over training (learning rate, R1/R2 gamma, augmentation probability).

A schedule moves from `start` to `end` over `kimg` thousand real images shown to D, then holds
`end`. R3GAN anneals its learning rate, its R1/R2 gamma and its augmentation probability this
way: cosine from a high to a low value over the first part of training. A knob is written as
text so one string field in params.yaml covers all three forms:

    "2e-4"                  constant
    "2e-4->5e-5@500"        linear from 2e-4 to 5e-5 over 500 kimg, then held at 5e-5
    "cos:2e-4->5e-5@500"    the same with a half-cosine (slow, fast, slow)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NoReturn, get_args

from pipeline.core.errors import ConfigError

Shape = Literal["constant", "linear", "cosine"]
SHAPES: tuple[str, ...] = get_args(Shape)
FORMS = (
    "a number ('2e-4'), 'START->END@KIMG' (linear over KIMG thousand images, then held, "
    "e.g. '2e-4->5e-5@500') or 'cos:START->END@KIMG' (cosine, e.g. 'cos:2e-4->5e-5@500')"
)
COSINE_PREFIX = "cos:"


@dataclass(frozen=True)
class Schedule:
    """A value that goes from `start` to `end` over `kimg`, then stays at `end`."""

    start: float  # value at 0 kimg
    end: float  # value from `kimg` on (equals start for "constant")
    kimg: float  # thousands of real images to get from start to end (0 for "constant")
    shape: Shape = "constant"  # how it gets there: constant | linear | cosine

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"schedule shape {self.shape!r} is not one of {SHAPES}")
        if not all(math.isfinite(v) for v in (self.start, self.end, self.kimg)):
            raise ValueError(f"schedule numbers must be finite: {self}")
        if self.shape == "constant" and (self.end != self.start or self.kimg != 0):
            raise ValueError("a constant schedule has end == start and kimg == 0")
        if self.shape != "constant" and self.kimg <= 0:
            raise ValueError(f"a {self.shape} schedule needs kimg > 0, got {self.kimg}")

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """The schedule that is always `value`."""
        return cls(value, value, 0.0, "constant")

    @property
    def lowest(self) -> float:
        """Smallest value it ever takes (both shapes are monotone), for range checks."""
        return min(self.start, self.end)

    @property
    def highest(self) -> float:
        """Largest value it ever takes."""
        return max(self.start, self.end)

    def value(self, kimg_seen: float) -> float:
        """The value after `kimg_seen` thousand real images; clamped to start / end outside."""
        if self.shape == "constant":
            return self.start
        t = min(max(kimg_seen / self.kimg, 0.0), 1.0)  # fraction of the way, in [0, 1]
        weight = t if self.shape == "linear" else (1 - math.cos(math.pi * t)) / 2
        return self.start + (self.end - self.start) * weight

    def text(self) -> str:
        """The knob string that parses back to this schedule (for logs and params output)."""
        if self.shape == "constant":
            return _short(self.start)
        prefix = COSINE_PREFIX if self.shape == "cosine" else ""
        return f"{prefix}{_short(self.start)}->{_short(self.end)}@{_short(self.kimg)}"


def _short(value: float) -> str:
    """`value` as short text that reads back exactly (2e-4 -> '0.0002', 500.0 -> '500')."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def parse_schedule(text: str | float, key: str) -> Schedule:
    """Read a schedule knob; bad text raises ConfigError naming `key`, the value and the forms.

    `key` is how the user wrote the knob (e.g. "train.lr_schedule"). A bare number (YAML may
    hand one over as float) is a constant. Range checks (lr > 0, p <= 1) are the caller's:
    compare `lowest` and `highest`.
    """
    body = str(text).strip()
    shape: Shape = "linear"
    if body.startswith(COSINE_PREFIX):
        body, shape = body[len(COSINE_PREFIX):], "cosine"
    if "->" not in body:
        if shape == "cosine":
            _fail(key, text, "cos: needs START->END@KIMG")
        return Schedule.constant(_number(body, key, text, "value"))
    ends, at, kimg_text = body.partition("@")
    if not at:
        _fail(key, text, "missing @KIMG")
    start_text, _, end_text = ends.partition("->")
    start = _number(start_text, key, text, "START")
    end = _number(end_text, key, text, "END")
    kimg = _number(kimg_text, key, text, "KIMG")
    if kimg <= 0:
        _fail(key, text, "KIMG must be > 0")
    return Schedule(start, end, kimg, shape)


def _number(part: str, key: str, text: str | float, what: str) -> float:
    """`part` as a finite float, or a ConfigError saying which part is wrong."""
    try:
        value = float(part.strip())
    except ValueError:
        _fail(key, text, f"{what} {part.strip()!r} is not a number")
    if not math.isfinite(value):
        _fail(key, text, f"{what} must be finite")
    return value


def _fail(key: str, text: str | float, reason: str) -> NoReturn:
    raise ConfigError(f"'{key}' is {text!r} ({reason}); allowed: {FORMS}")


def is_schedule(text: str | float) -> bool:
    """Whether `text` parses as a schedule: a predicate for config rules (no exception)."""
    try:
        parse_schedule(text, "schedule")
    except ConfigError:
        return False
    return True
