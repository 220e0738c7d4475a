"""The real kaggle client end to end against a loopback fake of api.kaggle.com.

Request, redirect, streamed download, caching and safe extraction all run for real; only the
server is ours (tests/kaggle_server.py). Needs port 80 on 127.0.0.1 (tests run as root).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from kaggle_server import FakeKaggle, port_free
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.ingest.sources import fetch

# One file holds every test of the fake server: `make test`'s workers take whole files, so two
# never bind port 80 at once.
pytestmark = pytest.mark.skipif(bool(port_free()), reason=port_free() or "port 80 is free")

NAMES = ["đồng hồ/Đồng hồ cổ 1.png", "đồng hồ/Đồng hồ cổ 2.png", "xe máy/xe máy.jpg"]


def _image(name: str, i: int) -> bytes:
    """A small real image whose format follows the name's extension."""
    buffer = io.BytesIO()
    fmt = "JPEG" if name.endswith(".jpg") else "PNG"
    Image.new("RGB", (8 + i, 8), (40 * i, 90, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture()
def images() -> dict[str, bytes]:
    return {name: _image(name, i) for i, name in enumerate(NAMES)}


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("README.txt", "not an image")
    return buffer.getvalue()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Dummy legacy credentials, the LOCALHOST endpoint, and no trace of real user settings."""
    for key in ("KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "dummy-key")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    return tmp_path


def _check_files(out: Path, images: dict[str, bytes]) -> None:
    """Every image is on disk byte for byte and listed in files.csv with its sha256."""
    table = pd.read_csv(out / "files.csv", keep_default_na=False)
    kept = table[table.kind == "image"].set_index("path")
    assert sorted(kept.index) == sorted(images)
    for name, data in images.items():
        assert (out / "files" / name).read_bytes() == data
        assert kept.loc[name, "sha256"] == hashlib.sha256(data).hexdigest()
        assert kept.loc[name, "bytes"] == len(data)
    assert table[table.path == "README.txt"].reason.tolist() == ["not an image extension: .txt"]


def test_dataset_download_extract_and_cache(env: Path, images: dict[str, bytes]) -> None:
    downloads = env / "downloads"
    with FakeKaggle(datasets={"tester/clocks": _zip(images)}) as fake:
        report = fetch("kaggle:tester/clocks", env / "out1", downloads, quiet=True)
        first = fake.paths()
        # Same source again: the cached archive is used, the server sees nothing new.
        again = fetch("kaggle:tester/clocks", env / "out2", downloads, quiet=True)
        assert fake.paths() == first
    assert first == [
        "/api/v1/datasets.DatasetApiService/GetDatasetMetadata",
        "/api/v1/datasets.DatasetApiService/DownloadDataset",
        "/files/datasets/tester/clocks.zip",
    ]
    # Legacy credentials travel as HTTP basic auth on the RPCs.
    basic = "Basic " + base64.b64encode(b"tester:dummy-key").decode()
    assert fake.seen[1].auth == basic
    assert fake.seen[1].body == {"ownerSlug": "tester", "datasetSlug": "clocks"}
    assert report.n_images == len(images) and report.n_ignored == 1
    assert report.license == again.license == "CC0-1.0"
    assert report.archive == str(downloads / "kaggle/tester/clocks/clocks.zip")
    _check_files(env / "out1", images)
    _check_files(env / "out2", images)


def test_dataset_version_and_bearer_token(env: Path, images: dict[str, bytes],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "dummy-token")
    with FakeKaggle(datasets={"tester/clocks": _zip(images)}) as fake:
        report = fetch("kaggle:tester/clocks@3", env / "out", env / "dl", limit=2, quiet=True)
    download = [s for s in fake.seen if s.path.endswith("/DownloadDataset")]
    assert download[0].body["datasetVersionNumber"] == 3
    assert download[0].auth == "Bearer dummy-token"
    # The token was checked with the server first, as the package does.
    assert "/api/v1/security.OAuthService/IntrospectToken" in fake.paths()
    assert report.n_images == 2  # limit: the first two by path
    assert (env / "dl/kaggle/tester/clocks@3/clocks.zip").is_file()


def test_competition_download(env: Path, images: dict[str, bytes]) -> None:
    with FakeKaggle(competitions={"gan-contest": _zip(images)}) as fake:
        report = fetch("kaggle-competition:gan-contest", env / "out", env / "dl", quiet=True)
        fetch("kaggle-competition:gan-contest", env / "out2", env / "dl", quiet=True)
    assert fake.paths() == ["/api/v1/competitions.CompetitionApiService/DownloadDataFiles",
                            "/files/competitions/gan-contest.zip"]
    assert report.kind == "kaggle-competition" and report.n_images == len(images)
    _check_files(env / "out", images)


def test_competition_rules_not_accepted(env: Path) -> None:
    with FakeKaggle(forbidden={"closed"}), pytest.raises(UserError, match="accept the compet"):
        fetch("kaggle-competition:closed", env / "out", env / "dl", quiet=True)


def test_unknown_dataset_is_one_sentence(env: Path) -> None:
    with FakeKaggle(), pytest.raises(UserError, match=r"404.*check the spelling"):
        fetch("kaggle:tester/typo", env / "out", env / "dl", quiet=True)
    # Nothing half-downloaded may count as cached afterwards.
    assert not (env / "dl/kaggle/tester/typo/fetched.json").exists()


def test_server_unreachable(env: Path) -> None:
    # Port 80 is free (the skip condition), so nothing answers: what offline looks like.
    with pytest.raises(UserError, match="cannot reach Kaggle"):
        fetch("kaggle:tester/clocks", env / "out", env / "dl", quiet=True)


SENTINEL = "SENTINEL-k3y-9f2c7a"  # a credential no output may contain


def _leaks(text: str) -> list[str]:
    """Which forms of the sentinel appear in `text`: plain, or inside Basic/Bearer base64."""
    forms = {"plain": SENTINEL,
             "base64 user:key": base64.b64encode(f"tester:{SENTINEL}".encode()).decode(),
             "base64 key": base64.b64encode(SENTINEL.encode()).decode()}
    return [name for name, form in forms.items() if form in text]


@pytest.mark.parametrize("credential", ["KAGGLE_KEY", "KAGGLE_API_TOKEN"])
def test_credentials_never_reach_output_or_files(env: Path, credential: str) -> None:
    """Sentinel credentials, a server that fails and echoes them back: the CLI's stdout,
    stderr and every file under data/ and submissions/ are free of them (and of their base64)."""
    import os
    import subprocess
    import sys

    project = env / "project"
    project.mkdir()
    (project / "params.yaml").write_text("fetch:\n  source: kaggle:tester/clocks\n")
    child_env = {k: v for k, v in os.environ.items() if k not in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")}
    child_env[credential] = SENTINEL
    with FakeKaggle(datasets={"tester/clocks": b""}, echo_credentials=True) as server:
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", "fetch", "--root",
                               str(project), "--params", str(project / "params.yaml"), "--quiet"],
                              cwd=Path(__file__).resolve().parents[1], env=child_env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "error:" in done.stderr, done.stderr  # reported ...
    assert server.seen and any(SENTINEL in s.auth or _leaks(s.auth) for s in server.seen)
    assert _leaks(done.stdout) == [] and _leaks(done.stderr) == [], done.stderr  # ... not the key
    for folder in ("data", "submissions"):
        for path in (project / folder).rglob("*"):
            if path.is_file():
                assert _leaks(path.read_bytes().decode("latin-1")) == [], path


def test_redaction_masks_every_form_of_the_key(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an unexpected client error is shown through: plain and base64 forms become ***."""
    from pipeline.core.kaggle import redact_credentials

    monkeypatch.setenv("KAGGLE_KEY", SENTINEL)
    basic = base64.b64encode(f"tester:{SENTINEL}".encode()).decode()
    bare = base64.b64encode(SENTINEL.encode()).decode()
    text = f"failed: key={SENTINEL} Authorization: Basic {basic} bare {bare}"
    masked = redact_credentials(text)
    assert _leaks(masked) == [] and masked.count("***") == 3
    assert redact_credentials("nothing secret here") == "nothing secret here"


def test_kaggle_submissions_are_read_through_the_real_client(env: Path) -> None:
    """The submissions ledger's kaggle side: the kaggle package itself lists a competition's
    submissions from the loopback stand-in, and an unknown competition is one sentence."""
    from pipeline.deliver.submission import kaggle_submissions

    rows = [{"ref": 7, "fileName": "images.zip", "date": "2026-11-30T10:05:30Z",
             "description": "first", "status": "COMPLETE", "publicScore": "41.5"}]
    with FakeKaggle(submissions={"dogs": rows}) as fake:
        listed = kaggle_submissions("dogs")
        with pytest.raises(UserError, match="submissions of nope"):
            kaggle_submissions("nope")
    assert any("ListSubmissions" in path for path in fake.paths())
    assert listed == [{"file_name": "images.zip", "date": dt.datetime(2026, 11, 30, 10, 5, 30),
                       "description": "first", "status": "COMPLETE", "public_score": "41.5",
                       "private_score": None}]
