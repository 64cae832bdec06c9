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


class PlainSegmenter:
    """The model traced once, and what it writes: a mask per image and a metrics row per image."""

    def __init__(self, model_folder: str, output: str) -> None:
        import keras
        import s3fs
        import tensorflow as tf

        self.fs = s3fs.S3FileSystem(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        with open(os.path.join(model_folder, "model.json")) as handle:
            info = json.load(handle)
        model = keras.saving.load_model(os.path.join(model_folder, "model.keras"), compile=False)
        self.height, self.width = info["input_size"]
        self.channels, self.classes = info["channels"], info["num_classes"]
        self.forward = tf.function(lambda x: model(x, training=False), input_signature=[
            tf.TensorSpec((None, self.height, self.width, self.channels), tf.float32)])
        self.output = output.rstrip("/")
        self.first_written: float | None = None
        self.images = 0

    def finish(self, batch: list[tuple[str, np.ndarray, np.ndarray]], rows: list[dict]) -> None:
        """Segment a batch of ``(key, image, truth)``: write each mask, add each metrics row to ``rows``."""
        from PIL import Image

        size = (self.width, self.height)
        tiles = np.stack([np.asarray(image if image.shape[:2] == (self.height, self.width) else
                                     Image.fromarray(image).resize(size, Image.Resampling.BILINEAR),
                                     dtype=np.float32) / 255.0 for _, image, _ in batch])
        scores = self.forward(tiles.reshape(len(batch), self.height, self.width, self.channels)).numpy()
        for (key, image, truth), score in zip(batch, scores):
            if score.shape[:2] != image.shape[:2]:
                score = np.stack([np.asarray(Image.fromarray(score[:, :, k]).resize(
                    (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR)) for k in range(self.classes)], axis=-1)
            predicted = np.argmax(score, axis=-1).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(predicted).save(buffer, format="PNG", compress_level=1)
            self.fs.pipe_file(f"{self.output}/masks/{key}.png", buffer.getvalue())
            dice = dice_per_class(predicted, truth, self.classes)
            foreground = [d for d in dice[1:] if d == d]
            rows.append({"key": key, "height": image.shape[0], "width": image.shape[1], "dice": dice,
                         "mean_dice": float(np.mean(foreground)) if foreground else float("nan")})
            self.images += 1
            if self.first_written is None:
                self.first_written = time.time()

    def segment_shard(self, shard: str, batch_size: int) -> None:
        """Segment one tar shard in batches and write its metrics file."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from PIL import Image

        with tarfile.open(fileobj=io.BytesIO(self.fs.cat_file(shard))) as archive:
            members = {member.name: archive.extractfile(member).read() for member in archive if member.isfile()}
        rows: list[dict] = []
        batch: list[tuple[str, np.ndarray, np.ndarray]] = []
        for name in sorted(members):
            if name.endswith(".mask.png") or not name.endswith(".png"):
                continue
            key = name[: -len(".png")]
            image = np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB" if self.channels == 3 else "L"))
            batch.append((key, image, np.asarray(Image.open(io.BytesIO(members[f"{key}.mask.png"])))))
            if len(batch) == batch_size:
                self.finish(batch, rows)
                batch = []
        if batch:
            self.finish(batch, rows)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        self.fs.pipe_file(f"{self.output}/metrics/{shard.rsplit('/', 1)[-1].rsplit('.', 1)[0]}.parquet",
                          buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Segment every image of the input's tar shards; print the timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True, help="a segpipe model artifact folder (model.keras, model.json)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    segmenter = PlainSegmenter(args.model, args.output)
    for shard in sorted(segmenter.fs.glob(f"{args.input.rstrip('/')}/*.tar")):
        segmenter.segment_shard(shard, args.batch_size)
    ended, first_written, images = time.time(), segmenter.first_written, segmenter.images
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
