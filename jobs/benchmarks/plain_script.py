"""The peer: what a careful user writes to segment an archive without Ray, one process, one image after another.

    python jobs/benchmarks/plain_script.py --input s3://bucket/shards --model path/to/artifact \\
        --output s3://bucket/plain --batch-size 32

Lists the tar shards with s3fs, and for each shard: reads it in one request, decodes each image
(Pillow), resizes it to the model's tile, runs the model through a traced call (``tf.function``
with a fixed signature, ``batch_size`` images at a time, the last batch of a shard short), resizes
the class scores back to the image's size and takes the argmax, writes the mask as a PNG to
the output, computes per-class Dice against the image's ground-truth mask, and writes one
Parquet file of ``key, height, width, dice, mean_dice`` per shard. TensorFlow gets every core.
Prints one JSON line: images, wall seconds since the process started, start-up (process start to
the first mask written) and the steady rate after it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time

import numpy as np

START = time.time()


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, classes: int) -> list[float]:
    """Return 2TP / (2TP + FP + FN) per class, NaN where the class is in neither."""
    scores = []
    for index in range(classes):
        p, t = predicted == index, truth == index
        denominator = p.sum() + t.sum()
        scores.append(float(2 * (p & t).sum() / denominator) if denominator else float("nan"))
    return scores


def main(argv: list[str] | None = None) -> int:
    """Segment every image of the input's tar shards; print the timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True, help="a segpipe model artifact folder (model.keras, model.json)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import keras
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs
    import tensorflow as tf
    from PIL import Image

    fs = s3fs.S3FileSystem(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    with open(os.path.join(args.model, "model.json")) as handle:
        info = json.load(handle)
    model = keras.saving.load_model(os.path.join(args.model, "model.keras"), compile=False)
    height, width = info["input_size"]
    channels, classes = info["channels"], info["num_classes"]
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32)])
    output = args.output.rstrip("/")
    first_written = None
    images = 0

    def finish(batch: list[tuple[str, np.ndarray, np.ndarray]], rows: list[dict]) -> None:
        nonlocal first_written, images
        tiles = np.stack([np.asarray(image if image.shape[:2] == (height, width) else
                                     Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR),
                                     dtype=np.float32) / 255.0 for _, image, _ in batch])
        scores = forward(tiles.reshape(len(batch), height, width, channels)).numpy()
        for (key, image, truth), score in zip(batch, scores):
            if score.shape[:2] != image.shape[:2]:
                score = np.stack([np.asarray(Image.fromarray(score[:, :, k]).resize(
                    (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR)) for k in range(classes)], axis=-1)
            predicted = np.argmax(score, axis=-1).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(predicted).save(buffer, format="PNG", compress_level=1)
            fs.pipe_file(f"{output}/masks/{key}.png", buffer.getvalue())
            dice = dice_per_class(predicted, truth, classes)
            foreground = [d for d in dice[1:] if d == d]
            rows.append({"key": key, "height": image.shape[0], "width": image.shape[1], "dice": dice,
                         "mean_dice": float(np.mean(foreground)) if foreground else float("nan")})
            images += 1
            if first_written is None:
                first_written = time.time()

    for shard in sorted(fs.glob(f"{args.input.rstrip('/')}/*.tar")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(shard))) as archive:
            members = {member.name: archive.extractfile(member).read() for member in archive if member.isfile()}
        rows: list[dict] = []
        batch: list[tuple[str, np.ndarray, np.ndarray]] = []
        for name in sorted(members):
            if name.endswith(".mask.png") or not name.endswith(".png"):
                continue
            key = name[: -len(".png")]
            image = np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB" if channels == 3 else "L"))
            truth = np.asarray(Image.open(io.BytesIO(members[f"{key}.mask.png"])))
            batch.append((key, image, truth))
            if len(batch) == args.batch_size:
                finish(batch, rows)
                batch = []
        if batch:
            finish(batch, rows)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        name = shard.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        fs.pipe_file(f"{output}/metrics/{name}.parquet", buffer.getvalue())
    ended = time.time()
    startup = (first_written or ended) - process_start()
    print(json.dumps({"images": images, "wall_seconds": round(ended - process_start(), 3),
                      "startup_seconds": round(startup, 3),
                      "steady_images_per_second": round((images - 1) / (ended - first_written), 3)
                      if first_written and images > 1 else 0.0}))
    return 0


def process_start() -> float:
    """Return when this process started, as segpipe measures it (:func:`pipeline.segment.run.process_created`)."""
    from pipeline.segment.run import process_created

    return process_created() or START


if __name__ == "__main__":
    sys.exit(main())
