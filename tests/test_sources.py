"""Sources end to end: parsing, dir:, zip:, the npm emoji set, the idx teaching sets, Kaggle
credentials. Everything runs for real; the only network is npm's registry for the emoji set
(fetched once per session, from npm's cache afterwards) and loopback."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.core.kaggle import find_credentials
from pipeline.ingest import sources
from pipeline.ingest.archive import sha256_file
from pipeline.ingest.sources import Source, fetch, fetch_npm_tarball, parse_source, read_idx_images


def png(seed: int = 0, size: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), (seed * 13 % 256, 50, 90, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "files.csv", keep_default_na=False).set_index("path")


# ----------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("text, expected", [
    ("builtin:fluent-emoji-3d", Source("builtin", "fluent-emoji-3d")),
    (" builtin:mnist ", Source("builtin", "mnist")),
    ("dir:data/my photos", Source("dir", "data/my photos")),
    ("zip:C:\\x.zip", Source("zip", "C:\\x.zip")),
    ("kaggle:jessicali9530/stanford-dogs-dataset",
     Source("kaggle", "jessicali9530/stanford-dogs-dataset")),
    ("kaggle:owner/slug@12", Source("kaggle", "owner/slug", 12)),
    ("kaggle-competition:generative-dog-images",
     Source("kaggle-competition", "generative-dog-images")),
])
def test_parse_source(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["", "mnist", "builtin:cifar", "dir:", "http://x.org/a.zip",
                                  "kaggle:slug-only", "kaggle:a/b/c", "kaggle:a/b@v2",
                                  "kaggle:../etc", "kaggle-competition:a/b"])
def test_bad_sources_list_the_forms(text: str) -> None:
    with pytest.raises(UserError) as error:
        parse_source(text)
    assert "dir:PATH" in str(error.value) and "kaggle:OWNER/SLUG[@VERSION]" in str(error.value)


# ----------------------------------------------------------------------------------------------
# dir: and zip:


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    """A user's folder: Vietnamese names with spaces, junk, and links of every kind."""
    root = tmp_path / "project" / "ảnh gốc"
    files = {"Ảnh xe máy/Honda Wave α.png": png(1), "Ảnh xe máy/thư mục con/b ảnh.PNG": png(2),
             "đồng hồ.jpg": png(3), ".DS_Store": b"junk", "__MACOSX/x.png": png(4),
             "ghi chú.txt": b"notes"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "elsewhere.png").write_bytes(png(5))
    (root / "liên kết.png").symlink_to(tmp_path / "elsewhere.png")  # followed: user's own file
    (root / "vòng").symlink_to(root)  # a folder link: not followed (no loop)
    (root / "hỏng.png").symlink_to(tmp_path / "missing.png")
    return root


def test_dir_source_end_to_end(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = fetch("dir:ảnh gốc", out, tmp_path / "dl", quiet=True,
                   project_root=photo_dir.parent)
    rows = table(out)
    images = sorted(rows.index[rows.kind == "image"])
    assert images == sorted(["liên kết.png", "Ảnh xe máy/Honda Wave α.png",
                             "Ảnh xe máy/thư mục con/b ảnh.PNG", "đồng hồ.jpg"])
    for name in images:
        data = (photo_dir / name).read_bytes()
        assert (out / "files" / name).read_bytes() == data
        assert rows.loc[name, "sha256"] == hashlib.sha256(data).hexdigest()
        assert rows.loc[name, "bytes"] == len(data)
    assert rows.loc[".DS_Store", "reason"] == "dotfile"
    assert rows.loc["__MACOSX/x.png", "reason"] == "__MACOSX"
    assert rows.loc["ghi chú.txt", "reason"] == "not an image extension: .txt"
    assert rows.loc["hỏng.png", "reason"] == "broken link"
    assert rows.loc["vòng", "reason"] == "link to a folder (not followed)"
    assert report.n_images == 4 and report.n_ignored == 5 and report.kind == "dir"
    assert report.bytes == sum(rows.loc[images, "bytes"])


def test_dir_limit_and_errors(photo_dir: Path, tmp_path: Path) -> None:
    report = fetch(f"dir:{photo_dir}", tmp_path / "o1", tmp_path / "dl", limit=2, quiet=True)
    chosen = sorted(table(tmp_path / "o1").query("kind == 'image'").index)
    assert report.n_images == 2 and chosen == sorted(
        p.relative_to(tmp_path / "o1/files").as_posix()
        for p in (tmp_path / "o1/files").rglob("*") if p.is_file())
    with pytest.raises(UserError, match="does not exist"):
        fetch(f"dir:{tmp_path / 'nope'}", tmp_path / "o2", tmp_path / "dl", quiet=True)
    with pytest.raises(UserError, match="use zip:PATH"):
        fetch(f"dir:{tmp_path / 'elsewhere.png'}", tmp_path / "o3", tmp_path / "dl", quiet=True)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts/a.txt").write_text("x")
    with pytest.raises(UserError, match=r"no image files \(ignored: 1 not an image"):
        fetch(f"dir:{tmp_path / 'texts'}", tmp_path / "o4", tmp_path / "dl", quiet=True)


def test_dir_source_skips_our_own_output(tmp_path: Path) -> None:
    """dir:. with data/ inside the project must not copy the fetch output into itself."""
    project = tmp_path / "proj"
    (project / "imgs").mkdir(parents=True)
    (project / "imgs/a.png").write_bytes(png())
    out, downloads = project / "data/raw.tmp", project / "data/downloads"
    (downloads / "old").mkdir(parents=True)
    (downloads / "old/x.png").write_bytes(png(2))
    report = fetch("dir:.", out, downloads, quiet=True, project_root=project)
    assert report.n_images == 1 and list(table(out).index) == ["imgs/a.png"]


def test_zip_source_end_to_end(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "đồng hồ.zip", "w") as zf:
        zf.writestr("Đồng hồ/ảnh 1.png", png(1))
        zf.writestr("../thoát.png", png(2))
        zf.writestr("__MACOSX/Đồng hồ/._ảnh 1.png", b"fork")
    report = fetch("zip:đồng hồ.zip", tmp_path / "out", tmp_path / "dl", quiet=True,
                   project_root=tmp_path)
    rows = table(tmp_path / "out")
    assert rows.loc["Đồng hồ/ảnh 1.png", "sha256"] == hashlib.sha256(png(1)).hexdigest()
    assert rows.loc["../thoát.png", "reason"] == "unsafe path: escapes the target folder"
    assert rows.loc["__MACOSX/Đồng hồ/._ảnh 1.png", "kind"] == "ignored"
    assert report.archive == str(tmp_path / "đồng hồ.zip")
    assert report.n_images == 1 and report.n_ignored == 2
    assert not (tmp_path / "out/thoát.png").exists() and not (tmp_path / "thoát.png").exists()


# ----------------------------------------------------------------------------------------------
# builtin:fluent-emoji-3d through real npm


@pytest.fixture(scope="session")
def emoji_downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A downloads folder holding the verified tarball, packed once per test session."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed (apt-get install npm)")
    folder = tmp_path_factory.mktemp("downloads")
    try:
        fetch_npm_tarball(sources.EMOJI_SPEC, sources.EMOJI_FILE, sources.EMOJI_SHA256,
                          folder / "npm")
    except UserError as error:
        pytest.skip(f"npm registry unreachable: {error}")
    return folder


@pytest.mark.slow
def test_emoji_builtin(emoji_downloads: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = emoji_downloads / "npm" / sources.EMOJI_FILE
    assert tarball.stat().st_size == sources.EMOJI_BYTES
    # Cached and verified: a second fetch needs neither npm nor the network.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    report = fetch("builtin:fluent-emoji-3d", tmp_path / "out", emoji_downloads, quiet=True)
    webps = list((tmp_path / "out/files/package/assets").glob("*.webp"))
    assert report.n_images == len(webps) == 3391
    assert report.archive == str(tarball) and report.license == "MIT"
    with Image.open(sorted(webps)[0]) as im:
        assert im.size == (256, 256) and im.mode == "RGBA"
    # package.json and README.md are listed, not extracted.
    rows = table(tmp_path / "out")
    assert rows.loc["package/package.json", "kind"] == "ignored"
    assert sorted(rows.index[rows.kind == "ignored"]) == ["package/README.md",
                                                         "package/package.json"]


def test_emoji_limit(emoji_downloads: Path, tmp_path: Path) -> None:
    report = fetch("builtin:fluent-emoji-3d", tmp_path / "out", emoji_downloads, limit=5,
                   quiet=True)
    assert report.n_images == 5 and report.ignored_by_reason["beyond limit"] == 3391 - 5


def test_npm_cache_mismatch_repacks_then_fails(emoji_downloads: Path, tmp_path: Path) -> None:
    folder = tmp_path / "npm"
    folder.mkdir()
    (folder / sources.EMOJI_FILE).write_bytes(b"tampered")
    path = fetch_npm_tarball(sources.EMOJI_SPEC, sources.EMOJI_FILE, sources.EMOJI_SHA256,
                             folder)
    assert sha256_file(path) == sources.EMOJI_SHA256  # packed again, now correct
    with pytest.raises(UserError, match="sha256 other than"):
        fetch_npm_tarball(sources.EMOJI_SPEC, sources.EMOJI_FILE, "0" * 64, folder)
    assert not (folder / sources.EMOJI_FILE).exists()  # a bad file is never left as cache


def test_npm_missing_or_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))
        with pytest.raises(UserError, match=r"install Node.js/npm \(apt-get install npm\)"):
            fetch("builtin:fluent-emoji-3d", tmp_path / "o1", tmp_path / "dl", quiet=True)
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    # A registry nobody answers and an empty npm cache: what offline looks like to npm.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(UserError, match="npm cannot reach its registry"):
        fetch("builtin:fluent-emoji-3d", tmp_path / "o2", tmp_path / "dl", quiet=True)


# ----------------------------------------------------------------------------------------------
# Teaching sets


def _idx(images: np.ndarray) -> bytes:
    return struct.pack(">iiii", 0x803, *images.shape) + images.tobytes()


def _labels(n: int) -> bytes:
    return struct.pack(">ii", 0x801, n) + bytes(n)


def test_read_idx(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (tmp_path / "a").write_bytes(_idx(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(images)))
    assert np.array_equal(read_idx_images(tmp_path / "a"), images)
    assert np.array_equal(read_idx_images(tmp_path / "a.gz"), images)
    (tmp_path / "bad").write_bytes(_idx(images)[:-5])
    with pytest.raises(UserError, match="not an idx image file"):
        read_idx_images(tmp_path / "bad")


def test_mnist_from_files_already_in_downloads(tmp_path: Path) -> None:
    """torchvision finds the idx files in place and downloads nothing; PNGs match them."""
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    raw = tmp_path / "dl/torchvision/MNIST/raw"
    raw.mkdir(parents=True)
    for stem, images in (("train", train), ("t10k", test)):
        (raw / f"{stem}-images-idx3-ubyte").write_bytes(_idx(images))
        (raw / f"{stem}-labels-idx1-ubyte").write_bytes(_labels(len(images)))
    report = fetch("builtin:mnist", tmp_path / "out", tmp_path / "dl", quiet=True)
    assert report.n_images == 7 and report.n_test == 4
    for folder, images in (("files", train), ("test", test)):
        for i, expected in enumerate(images):
            with Image.open(tmp_path / "out" / folder / f"{i:05d}.png") as im:
                assert im.mode == "L" and np.array_equal(np.asarray(im), expected)


def test_teaching_sets_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    # Mirrors on a closed loopback port and no Debian copy: the offline case, without network.
    for cls in (torchvision.datasets.MNIST, torchvision.datasets.FashionMNIST):
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(UserError, match="cannot download mnist with torchvision"):
        fetch("builtin:mnist", tmp_path / "o1", tmp_path / "dl", quiet=True)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fetch("builtin:fashion-mnist", tmp_path / "o2", tmp_path / "dl", quiet=True)


@pytest.mark.skipif(not (sources.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    from torchvision.datasets.mnist import read_image_file  # an independent idx reader

    report = fetch("builtin:fashion-mnist", tmp_path / "out", tmp_path / "dl", limit=20,
                   quiet=True)
    assert report.n_images == report.n_test == 20 and report.license == "MIT"
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(
        (sources.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()))
    expected = read_image_file(str(plain))[19].numpy()
    with Image.open(tmp_path / "out/test/00019.png") as im:
        assert im.size == (28, 28) and np.array_equal(np.asarray(im), expected)


# ----------------------------------------------------------------------------------------------
# Kaggle credentials (the download itself is tested against a fake server in test_kaggle.py)


@pytest.fixture()
def no_kaggle_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


@pytest.mark.parametrize("source", ["kaggle:owner/slug", "kaggle-competition:some-contest"])
def test_missing_kaggle_credentials(no_kaggle_credentials: Path, source: str,
                                    capsys: pytest.CaptureFixture) -> None:
    tmp = no_kaggle_credentials
    with pytest.raises(UserError) as error:
        fetch(source, tmp / "out", tmp / "dl", quiet=True)
    message = str(error.value)
    assert "no Kaggle credentials found" in message and "~/.kaggle/kaggle.json" in message
    assert "\n" not in message and capsys.readouterr().out == ""


def test_credentials_found_where_the_package_looks(no_kaggle_credentials: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = no_kaggle_credentials
    assert find_credentials() is None
    (tmp / "config").mkdir()
    (tmp / "config/kaggle.json").write_text('{"username": "u"}')  # no key: not usable
    assert find_credentials() is None
    (tmp / "config/kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert find_credentials() == str(tmp / "config/kaggle.json")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    assert find_credentials() == "KAGGLE_API_TOKEN"
