"""params.yaml loading: defaults, overrides, and errors naming key, value and what is allowed."""

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from pipeline.core.config import (
    CROSS_RULES,
    LossName,
    ModelName,
    Params,
    above,
    at_least,
    between,
    canonical,
    check_cross_rules,
    knob,
    load_params,
    one_of,
    parse_override,
    probability,
    satisfies,
    section_doc,
)
from pipeline.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_missing_file_and_sections_take_defaults(tmp_path):
    params = load_params(tmp_path / "absent.yaml")
    assert params == Params()
    assert params.pad.size == 128 and params.train.loss == "ralsgan"


def test_values_are_typed_and_ints_widen_to_floats(tmp_path):
    text = "train:\n  kimg: 3\n  seed: 7\npad:\n  background: [1, 2, 3]\n"
    params = load_params(write(tmp_path, text))
    assert params.train.kimg == 3.0 and isinstance(params.train.kimg, float)
    assert params.train.seed == 7
    assert params.pad.background == (1, 2, 3)


def test_override_wins_over_file(tmp_path):
    path = write(tmp_path, "train:\n  seed: 1\n")
    params = load_params(path, ["train.seed=5", "augment.rotations=[-5, 5]"])
    assert params.train.seed == 5
    assert params.augment.rotations == (-5.0, 5.0)


def test_unquoted_off_means_off(tmp_path):
    """YAML 1.1 reads `off` as false: a knob whose choices include "off" takes it as "off",
    in the file and in --set; booleans stay errors where "off" is not a choice."""
    assert load_params(write(tmp_path, "train:\n  amp: off\n")).train.amp == "off"
    assert load_params(write(tmp_path, ""), ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.model"):
        load_params(write(tmp_path, "train:\n  model: off\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  lrr: 0.1\n", ["unknown key 'train.lrr'", "0.1", "lr_g"]),
        ("train:\n  seed: three\n", ["'train.seed' is 'three'", "an integer"]),
        ("train:\n  loss: wasserstein\n", ["'train.loss'", "'ralsgan'", "'wgan-gp'"]),
        ("pad:\n  size: 100\n", ["'pad.size' is 100", "32, 64, 128 or 256"]),
        ("train:\n  width: 0\n", ["'train.width' is 0.0", "a number in (0, 4]"]),
        ("train:\n  beta1: 1.0\n", ["'train.beta1' is 1.0", "a number in [0, 1)"]),
        ("train:\n  label_flip: 0.5\n", ["'train.label_flip' is 0.5", "a probability in [0, 0.5)"]),
        ("train:\n  nz: 0\n", ["'train.nz' is 0", "1 or more"]),
        ("train:\n  kimg: 0\n", ["'train.kimg' is 0.0", "a number > 0"]),
        ("package:\n  size: 48\n", ["'package.size' is 48", "0, 28, 32, 64, 128 or 256"]),
        ("pad:\n  background: [0, 256, 0]\n", ["'pad.background' is (0, 256, 0)",
                                               "3 values in 0..255"]),
        ("train:\n  diffaugment: color,flip\n", ["'train.diffaugment' is 'color,flip'",
                                                  "ops from color, translation, cutout"]),
        ("augment:\n  rotations: [50]\n", ["'augment.rotations' is (50.0,)", "[-45, 45]"]),
        ("augment:\n  hflip: 1\n", ["'augment.hflip' is 1", "true or false"]),
        ("trainn:\n  seed: 1\n", ["unknown section 'trainn'", "train"]),
        ("train: [1, 2]\n", ["section 'train' must be a mapping"]),
        ("train:\n  seed: [\n", ["not valid YAML"]),
    ],
)
def test_errors_name_file_key_value_and_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_bad_override_forms():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("train.seed")
    with pytest.raises(ConfigError, match="section one of"):
        parse_override("nosuch.key=1")


def test_override_error_names_the_override(tmp_path):
    with pytest.raises(ConfigError, match="--set train.kimg=-1"):
        load_params(tmp_path / "absent.yaml", ["train.kimg=-1"])


def test_canonical_form_ignores_how_a_default_was_written(tmp_path):
    explicit = load_params(write(tmp_path, "pad:\n  size: 128\n  mode: letterbox\n"))
    assert canonical(explicit.pad) == canonical(Params().pad)
    changed = load_params(tmp_path / "x.yaml", ["pad.size=64"])
    assert canonical(changed.pad) != canonical(Params().pad)


def test_every_field_is_documented():
    for section in ("fetch", "crop", "pad", "augment", "train", "generate", "package", "score"):
        for key, kind, default, help_text in section_doc(section):
            assert help_text and kind and default, (section, key)


# ------------------------------------------------------------------------------------------------
# Rules next to knobs, and rules between knobs


def test_rule_objects_test_values_and_word_what_they_allow():
    width = between(0, 4, low_open=True)
    assert (width(0), width(0.001), width(4), width(4.001)) == (False, True, True, False)
    assert width.allowed == "a number in (0, 4]"
    flip = probability(0.5, high_open=True)
    assert (flip(0), flip(0.49), flip(0.5)) == (True, True, False)
    assert flip.allowed == "a probability in [0, 0.5)"
    assert (at_least(1)(1), at_least(1)(0), at_least(1).allowed) == (True, False, "1 or more")
    assert (above(0)(0), above(0)(1e-9), above(0).allowed) == (False, True, "a number > 0")
    sides = one_of(32, 64)
    assert (sides(32), sides(48), sides.allowed) == (True, False, "32 or 64")
    assert one_of("a", "b", "c").allowed == "'a', 'b' or 'c'"
    even = satisfies(lambda v: v % 2 == 0, "an even number")
    assert (even(4), even(3), even.allowed) == (True, False, "an even number")


def test_a_default_that_breaks_its_own_rule_is_refused_at_declaration():
    with pytest.raises(ValueError, match="default 0 breaks its own rule: 1 or more"):
        knob(0, "a count", check=at_least(1))


def test_every_default_passes_the_cross_rules():
    check_cross_rules(Params(), {})  # raises on a broken rule; no origin is looked up then


def test_readme_rows_say_what_is_allowed():
    rows = {key: help_text for key, _, _, help_text in section_doc("train")}
    assert rows["width"].endswith(". Allowed: a number in (0, 4]")
    package = {key: help_text for key, _, _, help_text in section_doc("package")}
    assert "0 or pad.size" in package["size"]
    assert "Allowed" not in rows["model"]  # a Literal's choices are its type, not a rule
    score = {key: help_text for key, _, _, help_text in section_doc("score")}
    assert "at most score.n when score.n > 0" in score["kid_subset_size"]


def test_cross_rules_blame_a_declared_key():
    for rule in CROSS_RULES:
        for key in rule.keys:
            section, name = key.split(".")
            assert name in {f.name for f in dataclasses.fields(getattr(Params(), section))}, key


@pytest.mark.parametrize(
    "text, expected",
    [
        ("package:\n  submit: true\n",
         ["'package.competition' is ''", "a competition name when package.submit is true",
          "package.submit is True"]),
        ("pad:\n  size: 64\npackage:\n  size: 128\n",
         ["'package.size' is 128", "0 or pad.size", "pad.size is 64"]),
        ("score:\n  n: 40\n  kid_subset_size: 100\n",
         ["'score.kid_subset_size' is 100", "at most score.n when score.n > 0",
          "score.n is 40"]),
    ],
)
def test_cross_rules_name_file_both_keys_values_and_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_cross_rules_accept_what_they_should(tmp_path):
    text = "pad:\n  size: 64\npackage:\n  size: 64\nscore:\n  n: 40\n  kid_subset_size: 40\n"
    params = load_params(write(tmp_path, text))
    assert (params.package.size, params.score.kid_subset_size) == (64, 40)
    # n = 0 scores every image, so no subset size is too large for it.
    params = load_params(tmp_path / "absent.yaml", ["score.n=0", "score.kid_subset_size=5000"])
    assert params.score.kid_subset_size == 5000
    params = load_params(tmp_path / "absent.yaml", ["package.submit=true",
                                                    "package.competition=gan-getting-started"])
    assert params.package.submit


def test_cross_rule_error_names_the_override(tmp_path):
    with pytest.raises(ConfigError, match="with --set package.submit=true: 'package.competition'"):
        load_params(tmp_path / "absent.yaml", ["package.submit=true"])


def test_model_names_match_the_model_registry():
    from pipeline.gan.models import MODELS

    assert set(get_args(ModelName)) == set(MODELS)


def test_loss_names_match_the_loss_registry():
    from pipeline.gan.losses import LOSSES

    assert set(get_args(LossName)) == set(LOSSES)


@pytest.mark.parametrize("text, line, key", [
    ("train:\n  seed: 1\npad:\n  size: 64\ntrain:\n  kimg: 5\n", 5, "train"),
    ("train:\n  seed: 1\n  kimg: 5\n  seed: 2\n", 4, "seed"),
])
def test_a_key_given_twice_names_the_file_and_both_lines(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}:{line}: '{key}' appears twice (first on line")


def test_a_params_file_the_user_named_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "typo.yaml", must_exist=True)
    assert load_params(tmp_path / "params.yaml") == Params()  # the project's own: defaults


# The CLI as `python -m pipeline` runs it, then a report of whether torch was ever imported.
CLI_THEN_TORCH_IMPORTED = """
import runpy, sys
sys.argv = ["pipeline", *sys.argv[1:]]
try:
    runpy.run_module("pipeline", run_name="__main__")
except SystemExit as stop:
    print("exit", stop.code, "torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("setting, shown", [
    ("train.kimgg=3", "unknown key 'train.kimgg'"),
    ("train.loss=wasserstein", "'train.loss' is 'wasserstein'"),
])
def test_a_wrong_parameter_is_reported_before_torch_loads(tmp_path, setting, shown):
    """Params are checked before the stages import torch: a typo costs a moment, not seconds."""
    done = subprocess.run([sys.executable, "-c", CLI_THEN_TORCH_IMPORTED, "run", "train",
                           "--root", str(tmp_path), "--set", setting],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert shown in done.stderr, done.stderr
    assert "exit 2 torch imported: False" in done.stdout, done.stdout + done.stderr
