"""Benchmark: seed 004's padding loop against the pipeline's own path, fetch -> crop -> pad.

Usage:
    python bench/bench_pad.py --n 1000     # the full run (a few minutes on 2 cores)
    python bench/bench_pad.py --n 50       # a smoke run

Makes N synthetic JPEG "photos" (300-1,600 px a side, smooth noise plus shapes; cached under
bench/out/photos/), reads them all once (warm page cache for both sides), then times whole
commands, each from a fresh interpreter:
  seed   seed 004's `padding_image` loop as written (matplotlib imread, cv2.resize,
         copyMakeBorder, normalise to [-1, 1], matplotlib imsave as .jpg), one process;
  ours   `python -m pipeline run pad` on a project whose `fetch.source` is `dir:` the photos
         and `crop.method: none` (no detector): what a user runs to get data/clean from a folder
         of photos: copy in, check each photo decodes (crop.method none links it unchanged),
         letterbox it from a reduced-scale JPEG decode, dedupe;
         once on every core and once pinned to one core (`taskset`), the seed's share.
Checks: both sides write N images of 128x128, and ours lands no farther than the seed's from a
full decode + INTER_AREA shrink (JPEG draft decoding against the seed's aliasing bilinear).
The pad stage alone (pad_images over the photos) is also run at N/10 and N: its peak resident
memory (parent and largest worker) should not grow with N.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import Result, finish  # noqa: E402

OUT = BENCH / "out"
PHOTOS = OUT / "photos"
SIZE = 128  # output side, as in data/clean


# ----------------------------------------------------------------------------------------------
# Synthetic photos


def make_photo(index: int) -> None:
    """Write photo `index` (deterministic): a smooth colour field, shapes, grain; JPEG q90."""
    import cv2

    path = PHOTOS / f"photo_{index:05d}.jpg"
    if path.exists():
        return
    rng = np.random.default_rng(index)
    width, height = (int(v) for v in rng.integers(300, 1601, size=2))
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # coarse colours, upsampled
    image = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(8):  # a few solid shapes, like objects in a scene
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(10, max(11, min(width, height) // 3)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, radius, colour, -1)
        else:
            corner = (centre[0] + radius, centre[1] + radius // 2)
            cv2.rectangle(image, centre, corner, colour, -1)
    grain = rng.normal(0, 8, image.shape)  # sensor-like noise keeps JPEGs photo-sized
    image = np.clip(image + grain, 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".tmp.jpg")
    cv2.imwrite(str(tmp), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    os.replace(tmp, path)


def ensure_photos(n: int) -> list[Path]:
    """The first n cached photos, making the missing ones on every core."""
    PHOTOS.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (PHOTOS / f"photo_{i:05d}.jpg").exists()]
    if missing:
        print(f"making {len(missing)} synthetic photos in {PHOTOS} ...", flush=True)
        with Pool(len(os.sched_getaffinity(0))) as pool:
            pool.map(make_photo, missing, chunksize=8)
    return [PHOTOS / f"photo_{i:05d}.jpg" for i in range(n)]


# ----------------------------------------------------------------------------------------------
# The two contenders (each runs in a child process, see `child`)


def seed_padding_image(img: str, desired_size: int) -> np.ndarray:
    """Seed 004's `padding_image`, unchanged but for the size argument (kept verbatim, so its
    comments and style are the seed's)."""
    import cv2
    import matplotlib.image as mpimg

    im = mpimg.imread(img)
    old_size = im.shape[:2]  # (height, width)
    ratio = float(desired_size) / max(old_size)
    new_size = tuple([int(x * ratio) for x in old_size])
    im = cv2.resize(im, (new_size[1], new_size[0]))
    delta_w = desired_size - new_size[1]
    delta_h = desired_size - new_size[0]
    top, bottom = delta_h // 2, delta_h - (delta_h // 2)
    left, right = delta_w // 2, delta_w - (delta_w // 2)
    color = [0, 0, 0]
    new_im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    new_im = (new_im - 127.5) / 127.5
    return new_im


def run_seed(files: list[Path], out_dir: Path) -> None:
    """Seed 004's loop. Its imsave of [-1, 1] floats raises on the matplotlib installed here
    (3.11), so the one change is mapping back to [0, 1] before saving."""
    import matplotlib.image
    from tqdm import tqdm

    for i in tqdm(range(0, len(files)), desc="seed", disable=True):
        img = seed_padding_image(str(files[i]), SIZE)
        matplotlib.image.imsave(os.path.join(out_dir, f"image_{i:05d}.jpg"), (img + 1) / 2)


def run_ours(files: list[Path], out_dir: Path) -> None:
    from pipeline.core.config import PadConfig
    from pipeline.ingest.pad import pad_images

    # Defaults as in params.yaml (letterbox, dedupe on), one worker per usable core.
    pad_images(files, PHOTOS, out_dir, PadConfig(size=SIZE, workers=0), quiet=True)


def child_seed_keep(n: int, out_dir: Path) -> None:
    """The seed loop writing into `out_dir` (kept for the checks)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    run_seed([PHOTOS / f"photo_{i:05d}.jpg" for i in range(n)], out_dir)


def child(which: str, n: int) -> None:
    """Run one contender on the first n photos; print seconds and peak RSS (MiB) as JSON."""
    files = [PHOTOS / f"photo_{i:05d}.jpg" for i in range(n)]
    out_dir = OUT / f"run_{which}_{n}"  # fresh each time: both write every output file
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    import matplotlib.image  # noqa: F401  (imports are not what we time)

    import pipeline.ingest.pad  # noqa: F401

    start = time.perf_counter()
    (run_seed if which == "seed" else run_ours)(files, out_dir)
    seconds = time.perf_counter() - start
    # RUSAGE_CHILDREN covers the pool workers once they have been joined.
    kib = 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "seconds": seconds,
        "outputs": len(list(out_dir.iterdir())),
        "rss_parent_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        "rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
    }))
    shutil.rmtree(out_dir, ignore_errors=True)


def measure(which: str, n: int) -> dict:
    """Run `child` in a fresh interpreter so imports and memory start from zero."""
    command = [sys.executable, __file__, "--child", which, "--n", str(n)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH.parent, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{which} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_command(command: list[str], cores: str | None = None) -> float:
    """Wall seconds of a whole command (interpreter start included), optionally pinned to
    `cores` with taskset."""
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH.parent, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def seed_command(n: int, out_dir: Path) -> list[str]:
    """The seed loop as one command writing into `out_dir`."""
    return [sys.executable, __file__, "--child", "seed-keep", "--n", str(n), "--out",
            str(out_dir)]


def pipeline_project(project: Path, n: int) -> list[str]:
    """A fresh project whose source is the first n photos; the command that pads them."""
    shutil.rmtree(project, ignore_errors=True)
    photos = project.parent / f"{project.name}-photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for i in range(n):  # hard links: the same bytes, already in the page cache
        os.link(PHOTOS / f"photo_{i:05d}.jpg", photos / f"photo_{i:05d}.jpg")
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(
        f"fetch:\n  source: dir:{photos}\ncrop:\n  method: none\n"
        f"pad:\n  size: {SIZE}\n  mode: letterbox\n", encoding="utf-8")
    return [sys.executable, "-m", "pipeline", "run", "pad", "--root", str(project),
            "--params", str(project / "params.yaml"), "--quiet"]


def written_images(folder: Path) -> tuple[int, bool]:
    """(image count, all SIZE x SIZE) of a folder of outputs."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    sizes = set()
    for path in files:
        with Image.open(path) as im:
            sizes.add(im.size)
    return len(files), sizes <= {(SIZE, SIZE)}


# ----------------------------------------------------------------------------------------------
# Fidelity of draft decoding


def fidelity(files: list[Path]) -> tuple[float, float]:
    """Mean absolute difference (levels of 255) of the shrunk picture (bands excluded) from a
    full decode shrunk with INTER_AREA to the same size: ours (JPEG draft decoding, then
    INTER_AREA) and the seed's (full decode, bilinear cv2.resize, which aliases)."""
    import cv2

    from pipeline.ingest.images import letterbox_box, load_image

    ours, seed = [], []
    for path in files:
        full, _ = load_image(path, 10**9)
        height, width = full.shape[:2]
        # Ours: the picture's box inside the letterbox, from the draft-decoded image.
        x0, y0, x1, y1 = letterbox_box(height, width, SIZE)
        fast, _ = load_image(path, 10**9, draft=SIZE)
        mine = cv2.resize(fast, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        reference = cv2.resize(full, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        ours.append(np.abs(mine.astype(int) - reference).mean())
        # Seed: its own (truncated) size, bilinear as in `padding_image`.
        ratio = SIZE / max(height, width)
        size = (int(width * ratio), int(height * ratio))
        reference = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
        seed.append(np.abs(cv2.resize(full, size).astype(int) - reference).mean())
    return float(np.mean(ours)), float(np.mean(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of photos (default 1,000)")
    parser.add_argument("--child", choices=["seed", "ours", "seed-keep"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="all cores only, no memory check (a smoke run)")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH.parent))  # import pipeline from this checkout
    if args.child == "seed-keep":
        child_seed_keep(args.n, args.out)
        return
    if args.child:
        child(args.child, args.n)
        return
    # Photos first (cached), read once so both sides find them in the page cache.
    files = ensure_photos(args.n)
    for path in files:
        path.read_bytes()
    megapixels = sum(_pixels(f) for f in files) / 1e6
    cores = len(os.sched_getaffinity(0))
    print(f"{args.n} JPEG photos, {megapixels:.0f} Mpx in all, {cores} usable CPU cores")
    seed_out = OUT / "pad_seed"
    seed = timed_command(seed_command(args.n, seed_out))
    seed_count, seed_sizes = written_images(seed_out)
    one_core = str(sorted(os.sched_getaffinity(0))[0])
    ours_error, seed_error = fidelity(files[:20])
    lines = {}
    pins = (("all cores", None),) + ((("one core", one_core),) if not args.quick else ())
    for label, pin in pins:
        project = OUT / "pad_project"
        command = pipeline_project(project, args.n)
        lines[label] = timed_command(command, pin)
        count, sizes = written_images(project / "data" / "clean")
        # Every photo accounted for: kept, or rejected with a recorded reason (an extreme
        # aspect, a duplicate) where the seed pads everything.
        with (project / "data" / "clean" / "ingest.csv").open(encoding="utf-8") as handle:
            rejected = sum(row["decision"] == "rejected" and bool(row["reason"])
                           for row in csv.DictReader(handle))
        finish(Result(
            "pad", f"fetch->crop->pad, {label}, {args.n} photos", ours_s=lines[label],
            theirs_s=seed,
            checks={"every photo kept or rejected with a reason":
                    count + rejected == seed_count == args.n,
                    "all 128x128": sizes and seed_sizes,
                    "shrink no worse than the seed's": ours_error <= seed_error},
            notes={"ours_img_per_s": args.n / lines[label], "theirs_img_per_s": args.n / seed,
                   "ours_shrink_error": ours_error, "seed_shrink_error": seed_error,
                   "ours_rejected": rejected}))
    print(f"seed 004 loop (1 process):        {seed:7.1f} s {args.n / seed:7.1f} img/s")
    for label, seconds in lines.items():
        print(f"make pad from photos ({label:>9}): {seconds:7.1f} s {args.n / seconds:7.1f} img/s"
              f"  -> {seed / seconds:.2f}x")
    if args.quick:
        return
    # The pad stage alone: flat memory, the N run should peak where the N/10 run did.
    small = measure("ours", max(1, args.n // 10))
    ours = measure("ours", args.n)
    for label, run in ((f"N/10={max(1, args.n // 10)}", small), (f"N={args.n}", ours)):
        print(f"pad_images peak RSS at {label:>9}: parent {run['rss_parent_mib']:.0f} MiB, "
              f"largest worker {run['rss_worker_mib']:.0f} MiB ({run['outputs']} PNGs kept)")
    print(f"shrink error vs full decode + INTER_AREA (20 photos, levels of 255): "
          f"ours {ours_error:.2f}, seed {seed_error:.2f}")


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height


if __name__ == "__main__":
    main()
