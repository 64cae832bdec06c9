"""Peak memory of one large image through the CPU stages: prepare (decode, resize to the tile) and
finish (scores back to the image's size, mask PNG, Dice/IoU against a ground-truth mask).

    python jobs/benchmarks/benchmark_memory.py [--workdir bench-memory] [--tile 256]

For each image (a 12000 x 9000 RGB JPEG, a 13000 x 13000 RGB PNG of a few dozen KB, a 4000 x
3000 RGB PNG) a fresh process imports the stages, then runs the image through them once; the
figure is its peak RSS above what it held after the imports (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` once the inputs are read), overall and per megapixel. The model itself is not run: the scores are random at the tile's size, as the actor
would return them, so only the stages' own buffers are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

IMAGES = {  # name -> (height, width, format)
    "jpeg-12000x9000": (9000, 12000, "JPEG"),
    "png-13000x13000": (13000, 13000, "PNG"),
    "png-4000x3000": (3000, 4000, "PNG"),
}


def write_images(workdir: Path) -> None:
    """Write each benchmark image and a ground-truth mask of its size (once; kept for later runs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    workdir.mkdir(parents=True, exist_ok=True)
    for name, (height, width, fmt) in IMAGES.items():
        image_path, mask_path = workdir / f"{name}.img", workdir / f"{name}.mask.png"
        if image_path.exists() and mask_path.exists():
            continue
        picture = Image.new("RGB", (width, height), (40, 60, 80))
        mask = Image.new("L", (width, height), 0)
        for drawing, fill in ((ImageDraw.Draw(picture), (220, 200, 90)), (ImageDraw.Draw(mask), 1)):
            for index in range(12):
                x, y = (index * 997) % width, (index * 613) % height
                drawing.ellipse((x, y, x + width // 8, y + height // 8), fill=fill)
        if fmt == "JPEG":
            noise = np.random.default_rng(0).integers(0, 24, (height, width, 1), dtype=np.uint8)
            picture = Image.fromarray(np.asarray(picture) + noise)  # texture, so the JPEG is a realistic size
        picture.save(image_path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        mask.save(mask_path, format="PNG")
        del picture, mask


def rss_mb(field: str) -> float:
    """Return this process's ``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")


def reset_peak() -> None:
    """Start the peak RSS (VmHWM) afresh from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(image_path: str, mask_path: str, tile: int) -> dict[str, float]:
    """Run one image through prepare and finish in this process; return its RSS figures in MB."""
    import numpy as np

    from pipeline.model import ModelInfo, ModelSpec
    from pipeline.segment import prepare, write
    from pipeline.segment.inferers import inferer_for
    from pipeline.segment.tiling import resolve_tiling

    info = ModelInfo(spec=ModelSpec(input_size=(tile, tile), channels=3, num_classes=2, depth=4), class_names=("bg", "fg"))
    image, mask = Path(image_path).read_bytes(), Path(mask_path).read_bytes()
    reset_peak()
    baseline = rss_mb("VmRSS")
    batch = {"key": np.array(["big"], dtype=object), "source": np.array(["bench"], dtype=object),
             "shard": np.array(["s"], dtype=object), "shard_rows": np.array([1]), "image": np.array([image], dtype=object),
             "mask": np.array([mask], dtype=object), "instances": np.array([b""], dtype=object),
             "error": np.array([""], dtype=object),
             "error_kind": np.array([""], dtype=object), "truth_error": np.array([""], dtype=object),
             "truth_error_kind": np.array([""], dtype=object)}
    prepared = prepare.prepare_batch(batch, info)
    after_prepare = rss_mb("VmHWM")
    scores = np.random.default_rng(0).integers(0, 256, (tile, tile, 2), dtype=np.uint8)
    item = {name: prepared[name][0] for name in prepared if name != "pixels"}
    with tempfile.TemporaryDirectory() as output:
        inferer = inferer_for(resolve_tiling("resize", "resize", (tile, tile)), info, 1)
        row = write.finish_row({**item, "scores": scores}, inferer, output, None)
    peak = rss_mb("VmHWM")
    megapixels = int(item["height"]) * int(item["width"]) / 1e6
    return {"status": row["status"], "error": row.get("error"), "megapixels": megapixels,
            "baseline_mb": round(baseline), "prepare_peak_mb": round(after_prepare - baseline),
            "peak_mb": round(peak - baseline), "mb_per_megapixel": round((peak - baseline) / megapixels, 2),
            "file_mb": round(len(image) / 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-memory", help="where the images are written (kept)")
    parser.add_argument("--tile", type=int, default=256, help="model tile size (default 256)")
    parser.add_argument("--measure", nargs=2, metavar=("IMAGE", "MASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.tile)))
        return 0
    workdir = Path(args.workdir)
    write_images(workdir)
    for name in IMAGES:
        child = subprocess.run([sys.executable, __file__, "--tile", str(args.tile), "--measure",
                                str(workdir / f"{name}.img"), str(workdir / f"{name}.mask.png")],
                               capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        print(json.dumps({"image": name, **json.loads(child.stdout.strip().splitlines()[-1])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
