"""Schedules against values worked out by hand; the knob parser and its error messages."""

from __future__ import annotations

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.schedules import Schedule, is_schedule, parse_schedule


def test_constant_is_the_same_everywhere() -> None:
    schedule = parse_schedule("2e-4", "train.lr_schedule")
    assert schedule == Schedule(2e-4, 2e-4, 0.0, "constant")
    assert [schedule.value(k) for k in (-1.0, 0.0, 250.0, 1e6)] == [2e-4] * 4
    assert parse_schedule(0.5, "train.gamma_schedule").value(10.0) == 0.5  # YAML float


def test_linear_start_middle_end_and_past_the_end() -> None:
    schedule = parse_schedule("2e-4->5e-5@500", "train.lr_schedule")
    assert schedule == Schedule(2e-4, 5e-5, 500.0, "linear")
    assert schedule.value(0.0) == pytest.approx(2e-4)
    assert schedule.value(-3.0) == pytest.approx(2e-4)  # before the start: held at start
    assert schedule.value(125.0) == pytest.approx(2e-4 - 0.25 * 1.5e-4)  # a quarter: 1.625e-4
    assert schedule.value(250.0) == pytest.approx(1.25e-4)
    assert schedule.value(500.0) == pytest.approx(5e-5)
    assert schedule.value(5000.0) == pytest.approx(5e-5)  # held after the end


def test_cosine_start_middle_end_and_past_the_end() -> None:
    schedule = parse_schedule("cos:10->2@400", "train.gamma_schedule")
    assert schedule == Schedule(10.0, 2.0, 400.0, "cosine")
    assert schedule.value(0.0) == pytest.approx(10.0)
    assert schedule.value(200.0) == pytest.approx(6.0)  # halfway: the mean of the two
    # A quarter of the way: weight (1 - cos(pi/4)) / 2 = (1 - 0.70711) / 2 = 0.146447.
    assert schedule.value(100.0) == pytest.approx(10 - 8 * 0.1464466, rel=1e-6)
    assert schedule.value(400.0) == pytest.approx(2.0)
    assert schedule.value(1000.0) == pytest.approx(2.0)


def test_schedules_can_rise_and_report_their_range() -> None:
    schedule = parse_schedule(" cos: 0 -> 0.6 @ 100 ", "train.augment_schedule")
    assert schedule.value(50.0) == pytest.approx(0.3)
    assert (schedule.lowest, schedule.highest) == (0.0, 0.6)
    falling = parse_schedule("2e-4->5e-5@500", "train.lr_schedule")
    assert (falling.lowest, falling.highest) == (5e-5, 2e-4)


def test_text_round_trips() -> None:
    for text in ("0.0002", "0.0002->5e-05@500", "cos:10->2@400", "cos:0.1234567891->0@1.5"):
        assert parse_schedule(text, "k").text() == text
    assert Schedule.constant(2e-4).text() == "0.0002"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fast", "value 'fast' is not a number"),
        ("", "value '' is not a number"),
        ("2e-4->5e-5", "missing @KIMG"),
        ("2e-4->5e-5@0", "KIMG must be > 0"),
        ("2e-4->5e-5@-5", "KIMG must be > 0"),
        ("2e-4->@500", "END '' is not a number"),
        ("x->5e-5@500", "START 'x' is not a number"),
        ("2e-4->5e-5@500kimg", "KIMG '500kimg' is not a number"),
        ("cos:2e-4", "cos: needs START->END@KIMG"),
        ("nan", "value must be finite"),
        ("exp:2e-4->5e-5@500", "START 'exp:2e-4' is not a number"),
    ],
)
def test_bad_text_names_the_key_the_value_and_the_forms(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_schedule(text, "train.lr_schedule")
    message = str(info.value)
    assert message.startswith(f"'train.lr_schedule' is {text!r} ({reason}); allowed: ")
    for form in ("a number", "START->END@KIMG", "cos:START->END@KIMG"):
        assert form in message


def test_schedule_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError):
        Schedule(1.0, 2.0, 0.0, "linear")
    with pytest.raises(ValueError):
        Schedule(1.0, 2.0, 0.0, "constant")
    with pytest.raises(ValueError):
        Schedule(1.0, 2.0, 5.0, "step")  # type: ignore[arg-type]


def test_is_schedule_is_a_predicate_for_config_rules() -> None:
    assert is_schedule("1") and is_schedule(0.5) and is_schedule("cos:1->0.25@500")
    assert not is_schedule("cos:1->0.25") and not is_schedule("1->2@0") and not is_schedule("")
