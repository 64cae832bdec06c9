"""How far the float resize path (normalise, then resize float32) lies from segmentation's resize chain.

    python jobs/benchmarks/resize_skew.py                                   # pixels of the shared data sets
    python jobs/benchmarks/resize_skew.py --model M --labelled FOLDER       # plus a resize model's Dice both ways

Until 2026-12-06 training at ``scale: resize`` normalised each image first and resized the float32
array, while segmentation resized the image in its own 8- or 16-bit type (Pillow's rounding, and a
large JPEG reduced while decoding) and normalised after. Training now uses segmentation's chain.
This script measures what the two paths differ by: the model input of every image of the shared
data sets at a 256-px tile, and, for a resize model trained the old way, its foreground Dice on a
labelled image folder (``images/``, ``masks/``) fed each path, the masks decided at the images'
size exactly as ``segpipe segment`` decides them.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import imaging, metrics

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def float_path(data: bytes, tile: tuple[int, int], channels: int, normalization: dict) -> np.ndarray:
    """Return the model input of the float path: decode, match channels, normalise, resize float32."""
    decoded = imaging.match_channels(imaging.decode_image(data), channels)
    return imaging.resize_channels(imaging.normalise(decoded, normalization), *tile, Image.Resampling.BILINEAR)


def pixel_skew(pattern: str, channels: int, tile: tuple[int, int] = (256, 256)) -> str:
    """Return a line with the largest and mean difference of the two paths' input over ``pattern``'s images."""
    largest, means, share = [], [], []
    paths = sorted(glob.glob(pattern))
    for path in paths:
        data = Path(path).read_bytes()
        chain, _ = imaging.read_model_input(data, tile, channels, {"mode": "scale"})
        difference = np.abs(chain - float_path(data, tile, channels, {"mode": "scale"}))
        largest.append(difference.max())
        means.append(difference.mean())
        share.append((difference * 255 > 0.5).mean())
    return (f"{len(paths)} images at {tile[0]} px: largest |difference| {max(largest) * 255:.2f} grey levels, "
            f"mean {np.mean(means) * 255:.3f} levels, {np.mean(share) * 100:.2f} % of values off by more than half a level")


def dice_both_ways(model_url: str, folder: str) -> list[str]:
    """Return a line per path: pooled and per-image foreground Dice of the model on the labelled folder."""
    from pipeline.model import load_artifact

    loaded = load_artifact(model_url)
    spec, normalization = loaded.info.spec, loaded.info.normalization
    counts = {"segmentation chain": np.zeros(3), "float path": np.zeros(3)}
    per_image: dict[str, list[float]] = {name: [] for name in counts}
    paths = sorted(glob.glob(f"{folder}/images/*.png"))
    for path in paths:
        data = Path(path).read_bytes()
        chain, size = imaging.read_model_input(data, spec.input_size, spec.channels, normalization)
        truth = imaging.decode_mask(Path(path.replace("/images/", "/masks/")).read_bytes(), spec.num_classes, size)
        inputs = np.stack([chain, float_path(data, spec.input_size, spec.channels, normalization)])
        for name, scores in zip(counts, loaded.model(inputs, training=False).numpy()):
            mask = imaging.mask_at_size(imaging.quantise_scores(scores), *size, loaded.info.threshold)
            found = metrics.image_metrics(mask, truth, spec.num_classes)
            tp, fp, fn = found["tp"][1], found["fp"][1], found["fn"][1]
            counts[name] += (tp, fp, fn)
            if tp + fp + fn:
                per_image[name].append(2 * tp / (2 * tp + fp + fn))
    return [f"{name}: foreground Dice pooled {2 * tp / (2 * tp + fp + fn):.4f}, per image {np.mean(per_image[name]):.4f} "
            f"({len(paths)} images)" for name, (tp, fp, fn) in counts.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a resize model artifact to score both ways")
    parser.add_argument("--labelled", help="an image folder with images/ and masks/ to score it on")
    args = parser.parse_args()
    for name, pattern, channels in (("dsb2018-nuclei-train", "images/*.png", 3), ("isbi2012-membrane", "images/*", 1)):
        if not (DATASETS / name).exists():
            print(f"{name}: skipped, {DATASETS / name} is absent")
            continue
        print(f"{name}: {pixel_skew(str(DATASETS / name / pattern), channels)}")
    if args.model and args.labelled:
        for line in dice_both_ways(args.model, args.labelled):
            print(line)


if __name__ == "__main__":
    main()
