"""YOLO crop: the pure box rules, the offline weights message, and real detections.

The detection tests use a tiny detector trained on drawn clocks (tests/yolo_fixture.py), so
they exercise ultralytics for real: decoding, colour order, batching, box coordinates.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from yolo_fixture import CLASS_NAME, make_scene, tiny_yolo_weights, ultralytics_sandbox

from pipeline.core.config import CropConfig, load_params
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file
from pipeline.ingest.crop import flat_names
from pipeline.ingest.detect import (
    Detection,
    choose_detection,
    class_ids,
    crop_with_yolo,
    expand_box,
    resolve_weights,
)
from pipeline.ingest.images import load_image

# A confidence at which the tiny model separates drawn clocks from distractors with margin.
CONF = 0.7


@pytest.fixture(autouse=True, scope="module")
def _sandbox() -> None:
    """No test here may write ultralytics settings into the home folder."""
    ultralytics_sandbox()


@pytest.fixture(scope="session")
def tiny_yolo() -> Path:
    """The tiny clock detector, trained once and cached across sessions."""
    return tiny_yolo_weights()


def _cfg(**changes: object) -> CropConfig:
    base = dict(method="yolo", classes=(CLASS_NAME,), conf=CONF, max_objects=1, min_box=0.1,
                margin=0.0, square=True, batch_size=4)
    base.update(changes)
    return CropConfig(**base)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


# ----------------------------------------------------------------------------------------------
# Pure rules


def test_choose_detection_rules() -> None:
    small = Detection((10, 10, 20, 20), 0.9, "clock")
    big = Detection((0, 0, 50, 40), 0.6, "clock")
    cfg = _cfg(max_objects=2, min_box=0.3)
    assert choose_detection([], 100, 80, cfg) == (None, "no clock found")
    assert choose_detection([small, big], 100, 80, cfg) == (big, "")  # largest by area wins
    choice, reason = choose_detection([small, big, small], 100, 80, cfg)
    assert choice == big and reason == "too many objects: 3 > 2"
    # Longer side 10 px against 0.3 x the shorter image side (80 px) = 24 px
    choice, reason = choose_detection([small], 100, 80, cfg)
    assert choice == small and reason.startswith("object too small: 10 px < 0.3 x 80 px")
    two = _cfg(classes=("clock", "person"))
    assert choose_detection([], 10, 10, two)[1] == "no clock or person found"


def test_expand_box_square_slides_inside_the_image() -> None:
    # A 20x10 box in the middle becomes a 20x20 square around its centre
    assert expand_box((40, 45, 60, 55), 100, 100, 0.0, True) == (40, 40, 60, 60)
    # Margin 0.25 grows each side by a quarter of the box: 30x15, squared to 30
    assert expand_box((40, 45, 60, 55), 100, 100, 0.25, True) == (35, 35, 65, 65)
    # At the left edge the square slides right instead of being cut
    assert expand_box((0, 40, 10, 70), 100, 100, 0.0, True) == (0, 40, 30, 70)
    # Larger than the image's height: clipped there, still centred horizontally
    x0, y0, x1, y1 = expand_box((20, 0, 90, 30), 120, 40, 0.0, True)
    assert (y0, y1) == (0, 40) and x1 - x0 == 70


def test_expand_box_without_square_clips() -> None:
    assert expand_box((0, 40, 10, 70), 100, 100, 0.1, False) == (0, 37, 11, 73)
    assert expand_box((99.2, 5, 99.8, 5.5), 100, 100, 0.0, False) == (99, 5, 100, 6)


def test_unknown_class_lists_the_model_classes() -> None:
    with pytest.raises(UserError, match="available: person, clock"):
        class_ids({0: "person", 1: "clock"}, ["clock", "watch"], "w.pt")
    assert class_ids({0: "person", 1: "clock"}, ["Clock"], "w.pt") == [1]


def test_importing_ultralytics_leaves_pil_alone(tmp_path: Path) -> None:
    """ultralytics patches PIL.Image.open to pip-install a HEIF plugin; we undo that."""
    import ultralytics  # noqa: F401  (already imported by the sandbox; the patch is undone)

    (tmp_path / "fake.png").write_text("hello")
    assert load_image(tmp_path / "fake.png", 10**6) == (None, "not an image: unknown format")


# ----------------------------------------------------------------------------------------------
# Weights


def test_missing_weights_offline_is_a_user_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")  # ultralytics' own offline switch
    with pytest.raises(UserError) as error:
        crop_with_yolo([], tmp_path, tmp_path / "out", _cfg(weights="yolo11n.pt"), 10**8, True,
                       base_dir=tmp_path)
    message = str(error.value)
    assert "'yolo11n.pt' are not on this machine and cannot be downloaded offline" in message
    assert str(tmp_path / "yolo11n.pt") in message and "set crop.weights" in message
    assert not (tmp_path / "yolo11n.pt").exists()
    with pytest.raises(UserError, match="not found at"):
        resolve_weights("mine/best.pt", tmp_path)  # not an ultralytics release name


def test_relative_weights_resolve_from_base_dir(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.pt").write_bytes(b"x")
    assert resolve_weights("models/w.pt", tmp_path) == tmp_path / "models" / "w.pt"


def test_a_broken_weights_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load YOLO weights"):
        crop_with_yolo([], tmp_path, tmp_path / "out", _cfg(weights="broken.pt"), 10**8, True,
                       base_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Real detections


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    code = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    assert cv2.imwrite(str(path), cv2.cvtColor(image, code))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list]]:
    """A folder of new scenes (not seen in training) and their true boxes by relative path."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(2024)
    truth: dict[str, list] = {}
    plan = [("one", 1, (0.15, 0.3), 4), ("none", 0, (0.1, 0.2), 3), ("three", 3, (0.12, 0.2), 2)]
    for kind, clocks, radius, count in plan:
        for i in range(count):
            height, width = [(120, 160), (160, 120), (150, 150), (240, 320)][i]
            image, boxes = make_scene(rng, height, width, clocks, radius=radius)
            rel = f"{kind}/{kind}_{i}.{'jpg' if i % 2 else 'png'}"
            _write(root / rel, image)
            truth[rel] = boxes
    # An RGBA picture: alpha must not reach ultralytics, and the crop keeps it
    image, boxes = make_scene(rng, 128, 128, 1, radius=(0.2, 0.3))
    alpha = np.full((128, 128, 1), 255, np.uint8)
    alpha[:8] = 0  # a transparent strip along the top
    _write(root / "one" / "alpha.png", np.concatenate([image, alpha], axis=2))
    truth["one/alpha.png"] = boxes
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    truth["broken.jpg"] = []
    return root, truth


def test_crop_with_a_real_detector(tiny_yolo: Path, scenes: tuple[Path, dict[str, list]],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, truth = scenes
    monkeypatch.chdir(tmp_path)  # ultralytics must not write ./runs or anything else here
    out = tmp_path / "crops"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rows = crop_with_yolo(files, root, out, _cfg(weights=str(tiny_yolo), margin=0.05), 10**8,
                          quiet=True)
    assert [r.file for r in rows] == sorted(truth)  # one row per file, sorted, posix paths
    names = flat_names(sorted(truth))
    by_file = {r.file: r for r in rows}
    for rel, boxes in truth.items():
        row = by_file[rel]
        if rel.startswith("one/"):
            assert row.decision == "kept", (rel, row.reason)
            x0, y0, x1, y1 = map(int, row.box.split())
            # The square crop of the one clock: it overlaps the true box well
            assert _iou((x0, y0, x1, y1), boxes[0]) > 0.5, (rel, row.box, boxes)
            assert row.score is not None and row.score >= CONF
            assert row.output == names[rel]  # the file written, named in the decision
            crop = cv2.imread(str(out / row.output), cv2.IMREAD_UNCHANGED)
            assert crop.shape[:2] == (y1 - y0, x1 - x0) and y1 - y0 == x1 - x0
            assert crop.shape[2] == (4 if rel.endswith("alpha.png") else 3)
        elif rel.startswith("none/"):
            assert (row.decision, row.reason, row.output) == ("rejected", "no clock found", ""), rel
        elif rel.startswith("three/"):
            assert row.decision == "rejected" and row.reason.startswith("too many objects: "), rel
            assert int(row.reason.split(": ")[1].split(" > ")[0]) >= 2
        else:
            assert row.decision == "rejected" and row.reason.startswith("corrupt"), row.reason
    kept_files = sorted(p.name for p in out.iterdir())
    assert kept_files == sorted(names[r.file] for r in rows if r.decision == "kept")
    assert list(tmp_path.iterdir()) == [out]


def test_small_objects_are_rejected(tiny_yolo: Path, scenes: tuple[Path, dict[str, list]],
                                    tmp_path: Path) -> None:
    root, truth = scenes
    files = sorted(root.glob("one/*"))
    # Clocks here span at most 0.6 of the shorter side: below 0.7 they are "too small"
    rows = crop_with_yolo(files, root, tmp_path, _cfg(weights=str(tiny_yolo), min_box=0.7,
                                                      batch_size=16), 10**8, quiet=True)
    assert len(rows) == len(files)
    assert all(r.reason.startswith("object too small") and r.box for r in rows), rows
    assert not list(tmp_path.glob("*.png"))


def test_unknown_class_with_a_real_model(tiny_yolo: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="available: clock"):
        crop_with_yolo([], tmp_path, tmp_path, _cfg(weights=str(tiny_yolo),
                                                    classes=("motorcycle",)), 10**8, True)


def test_pinned_weights_digest(tiny_yolo: Path, tmp_path: Path) -> None:
    """crop.weights_sha256: the real detector loads when its digest matches; a file with one
    byte changed is refused before torch unpickles it, and the message names both digests."""
    good = sha256_file(tiny_yolo)
    crop_with_yolo([], tmp_path, tmp_path / "ok", _cfg(weights=str(tiny_yolo),
                                                        weights_sha256=good), 10**8, True)
    tampered = tmp_path / "tampered.pt"
    data = bytearray(tiny_yolo.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(UserError) as error:
        crop_with_yolo([], tmp_path, tmp_path / "no", _cfg(weights=str(tampered),
                                                            weights_sha256=good), 10**8, True)
    assert good in str(error.value) and sha256_file(tampered) in str(error.value)
    assert "refusing to load" in str(error.value)
    (tmp_path / "p.yaml").write_text("crop:\n  weights_sha256: ABC\n")
    with pytest.raises(UserError, match="crop.weights_sha256"):  # the knob's own rule
        load_params(tmp_path / "p.yaml")


def test_a_download_with_another_digest_is_refused_and_kept_aside(tiny_yolo: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A known asset (yolo11n.pt) is checked against its recorded sha256 right after the
    download. Mocked, because this machine cannot reach GitHub: ultralytics' online check and
    its download function are replaced by ones that 'download' the tiny detector's bytes."""
    import ultralytics.utils
    import ultralytics.utils.downloads as downloads

    from pipeline.ingest import detect

    def fake_download(path, **_):
        Path(path).write_bytes(tiny_yolo.read_bytes())
        return str(path)

    monkeypatch.setattr(ultralytics.utils, "is_online", lambda: True)
    monkeypatch.setattr(downloads, "attempt_download_asset", fake_download)
    with pytest.raises(UserError) as error:
        resolve_weights("yolo11n.pt", tmp_path)
    message = str(error.value)
    assert detect.KNOWN_DOWNLOADS["yolo11n.pt"][0] in message
    assert sha256_file(tmp_path / "yolo11n.pt.rejected") in message
    assert not (tmp_path / "yolo11n.pt").exists()  # never left where it would be loaded
    # The same bytes under a recorded digest pass (as the real asset does with the real one).
    monkeypatch.setitem(detect.KNOWN_DOWNLOADS, "yolo11n.pt",
                        (sha256_file(tiny_yolo), tiny_yolo.stat().st_size))
    assert resolve_weights("yolo11n.pt", tmp_path) == tmp_path / "yolo11n.pt"
