"""The README stays true: its parameter table is generated from the config dataclasses."""

from pathlib import Path

from pipeline.cli import readme_with_params

REPO = Path(__file__).resolve().parents[1]


def test_readme_parameter_table_matches_the_config():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme == readme_with_params(readme), "run `make readme` to regenerate the table"


def test_readme_shows_the_two_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make all" in readme and "make test" in readme


def test_every_profile_loads(tmp_path):
    from pipeline.core.config import load_params

    for profile in sorted((REPO / "profiles").glob("*.yaml")) + [REPO / "params.yaml"]:
        load_params(profile)  # raises ConfigError naming the key if a profile drifts
