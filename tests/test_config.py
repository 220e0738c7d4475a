"""params.yaml loading: defaults, overrides, and errors naming key, value and what is allowed."""

from pathlib import Path

import pytest

from pipeline.core.config import Params, canonical, load_params, parse_override, section_doc
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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  lrr: 0.1\n", ["unknown key 'train.lrr'", "0.1", "lr_g"]),
        ("train:\n  seed: three\n", ["'train.seed' is 'three'", "an integer"]),
        ("train:\n  loss: wasserstein\n", ["'train.loss'", "'ralsgan'", "'wgan-gp'"]),
        ("pad:\n  size: 100\n", ["'pad.size' is 100", "32, 64, 128 or 256"]),
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
