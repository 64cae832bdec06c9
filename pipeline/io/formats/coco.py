"""COCO instances files: ``--input URL/annotations.json``, images at each entry's ``file_name``
relative to the file's folder (or under ``coco.images``).

The file is read once, on the driver, and cut into shards of a fixed number of images in the
order of its ``images`` list (``<stem>-00000``, ``<stem>-00001``, ...). Each shard carries its
images' entries and annotations (:attr:`Shard.payload`), so a reading task needs only its images;
its identity is a digest of that payload, so a re-run redoes exactly the shards whose entries or
annotations changed. A shard's images are read and each one's annotations drawn (pycocotools):
the class mask (category ids in sorted order become classes 1..K, 0 the background, crowd regions
255: not labelled) and the instance labels (one per annotation that is not crowd, larger objects
drawn first, so a smaller one on top keeps its pixels). An image without annotations is
background; a file without an ``annotations`` list gives images without ground truth.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from pipeline.config import StorageConfig
from pipeline.errors import ErrorKind, SampleError
from pipeline.imaging import IGNORE, LabelMap, decode_image, decode_instances, decode_mask, encode_instances, encode_png
from pipeline.io import storage
from pipeline.io.formats.base import Contents, InputError, InputFormat, Occurrence, Sample, Shard, Truth
from pipeline.io.formats.folder import file_occurrence

ANNOTATIONS_FILE = "annotations.json"  # what the format writes (sample data); any *.json is read


class CocoFormat(InputFormat):
    """A COCO instances JSON file and the images it names."""

    kind = "coco"
    file_suffixes = (".json",)

    def find_shards(self, url: str, relative: list[str], folder_shard_size: int) -> list[Shard]:
        return []  # a COCO input is named by its annotations file, never found inside a folder

    def single_file_shard(self, url: str) -> Shard | None:
        return None

    def file_shards(self, url: str, storage_config: StorageConfig | None, shard_size: int,
                    images: str = "") -> list[Shard] | None:
        if not url.lower().endswith(self.file_suffixes):
            return None
        return coco_shards(url, read_coco(url, storage_config), shard_size, images)

    def contents(self, shard: Shard, storage_config: StorageConfig | None,
                 wanted: Collection[str] | None = None) -> Contents:
        return coco_contents(shard, storage_config, wanted)

    def source_shard(self, source: str, keys: Collection[str], storage_config: StorageConfig | None) -> Shard:
        wanted = set(keys)
        data = read_coco(source, storage_config)
        shards = coco_shards(source, data, len(data.get("images") or []) or 1, "")
        payload = json.loads(shards[0].payload)
        payload["images"] = [entry for entry in payload["images"] if image_key(entry) in wanted]
        return Shard(shards[0].name, self.kind, source, payload=json.dumps(payload))

    def write(self, output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
        return write_coco(output, shards, storage_config)


def read_coco(url: str, storage_config: StorageConfig | None) -> dict[str, Any]:
    """Return a COCO file's content, checked to hold ``images`` and ``categories`` lists; InputError naming the fix."""
    try:
        data = json.loads(storage.read_bytes(url, storage_config))
    except FileNotFoundError as exc:
        raise InputError(f"COCO annotations file {url} does not exist; check the URL") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"COCO annotations file {url} is not valid JSON ({exc}); give a COCO instances file "
                         "(images, annotations, categories)") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise InputError(f"{url} is not a COCO instances file: it needs 'images' and 'categories' lists (and "
                         "'annotations' for ground truth)")
    return data


def category_classes(data: Mapping[str, Any], url: str) -> dict[int, int]:
    """Return COCO category id -> class index (1..K in the order of the ids; 0 is the background)."""
    ids = []
    for entry in data["categories"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not isinstance(entry.get("name"), str):
            raise InputError(f"{url}: category {entry!r} needs an integer 'id' and a 'name'")
        ids.append(entry["id"])
    if len(set(ids)) != len(ids):
        raise InputError(f"{url}: category ids repeat; each category needs its own id")
    if len(ids) >= IGNORE:
        raise InputError(f"{url}: {len(ids)} categories; at most {IGNORE - 1} fit segpipe's class masks")
    return {category: index + 1 for index, category in enumerate(sorted(ids))}


def coco_label_map(url: str, storage_config: StorageConfig | None) -> LabelMap:
    """Return the label map of a COCO input: background and the categories' names, 255 (crowd) not labelled."""
    data = read_coco(url, storage_config)
    classes = category_classes(data, url)
    names = {entry["id"]: entry["name"] for entry in data["categories"]}
    ordered = ["background", *(names[category] for category in sorted(classes))]
    return LabelMap.from_mapping({"classes": deduplicated(ordered), "ignore": [IGNORE]}, url)


def deduplicated(names: list[str]) -> list[str]:
    """Return the names with a repeated one suffixed by its index (two categories may share a name)."""
    seen: set[str] = set()
    out = []
    for index, name in enumerate(names):
        name = name.strip() or f"class_{index}"
        out.append(name if name not in seen else f"{name}_{index}")
        seen.add(out[-1])
    return out


def image_key(entry: Mapping[str, Any]) -> str:
    """Return an image entry's key: its ``file_name`` without the extension (folders kept, as a tar's members keep theirs)."""
    name = str(entry.get("file_name") or "")
    stem = name.rsplit(".", 1)[0] if "." in posixpath.basename(name) else name
    return stem or f"image-{entry.get('id')}"


def coco_shards(url: str, data: Mapping[str, Any], shard_size: int, images: str) -> list[Shard]:
    """Return the shards of a COCO file: ``shard_size`` images each, in the file's order, each carrying
    its images' entries and annotations."""
    classes = category_classes(data, url)
    annotated = isinstance(data.get("annotations"), list)
    by_image: dict[Any, list[Any]] = {}
    for annotation in data.get("annotations") or []:
        by_image.setdefault(annotation.get("image_id") if isinstance(annotation, dict) else None, []).append(annotation)
    root = images or url.rstrip("/").rsplit("/", 1)[0]
    stem = posixpath.basename(url).rsplit(".", 1)[0]
    entries = data["images"]
    size = max(1, shard_size)
    shards = []
    for start in range(0, len(entries), size):
        chosen = entries[start:start + size]
        payload = json.dumps({"root": root, "annotated": annotated, "classes": {str(k): v for k, v in classes.items()},
                              "images": chosen, "annotations": {
                                  str(entry.get("id")): by_image.get(entry.get("id"), []) for entry in chosen
                                  if isinstance(entry, dict)}}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
        shards.append(Shard(f"{stem}-{start // size:05d}", CocoFormat.kind, url, identity=f"coco:{digest}",
                            payload=payload))
    return shards


def coco_contents(shard: Shard, storage_config: StorageConfig | None, wanted: Collection[str] | None = None) -> Contents:
    """Return a COCO shard's images (its order) and their ground truth drawn from the annotations."""
    payload = json.loads(shard.payload)
    classes = {int(k): v for k, v in payload["classes"].items()}
    occurrences: list[Occurrence] = []
    truth: Truth = {}
    for index, entry in enumerate(payload["images"]):
        if not isinstance(entry, dict) or not entry.get("file_name"):
            occurrences.append(Occurrence(f"{shard.name}#image{index}", f"images[{index}]", error=f"image entry "
                                          f"{index} of {shard.url} has no file_name", kind=ErrorKind.MISSING_IMAGE,
                                          claims=False))
            continue
        key = image_key(entry)
        if wanted is not None and key not in wanted:
            continue
        url = storage.join_url(payload["root"], str(entry["file_name"]))
        occurrences.append(file_occurrence(key, url, storage_config, ErrorKind.CORRUPT_IMAGE))
        if payload["annotated"]:
            truth[key] = drawn_truth(key, entry, payload["annotations"].get(str(entry.get("id")), []), classes)
    return occurrences, truth, ""


def drawn_truth(key: str, entry: Mapping[str, Any], annotations: list[Any], classes: Mapping[int, int]) -> dict[str, Occurrence]:
    """Return an image's mask and instance labels drawn from its annotations, as PNG occurrences; one
    that cannot be drawn makes both an error of kind ``bad_annotation`` (the image is still segmented)."""
    try:
        mask, labels = draw_annotations(entry, annotations, classes)
    except SampleError as exc:
        failed = Occurrence(key, "annotations", error=f"COCO annotation of image {entry.get('id')}: {exc}", kind=exc.kind)
        return {"mask": failed}
    instances, _ = encode_instances(labels)
    return {"mask": Occurrence(key, "annotations", encode_png(mask, compress_level=1)),
            "instances": Occurrence(key, "annotations", instances)}


def draw_annotations(entry: Mapping[str, Any], annotations: list[Any], classes: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(class mask uint8, instance labels int32)`` of one image from its COCO annotations:
    crowd regions 255 in the mask and 0 in the labels, then the other objects largest first."""
    height, width = entry.get("height"), entry.get("width")
    if not isinstance(height, int) or not isinstance(width, int) or height < 1 or width < 1:
        raise SampleError(f"image entry {entry.get('id')} lacks a positive integer 'height' and 'width'",
                          ErrorKind.BAD_ANNOTATION)
    mask = np.zeros((height, width), dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.int32)
    drawn = [(annotation, annotation_pixels(annotation, height, width, classes)) for annotation in annotations]
    for annotation, pixels in drawn:
        if annotation.get("iscrowd"):
            mask[pixels] = IGNORE
    objects = [(annotation, pixels) for annotation, pixels in drawn if not annotation.get("iscrowd")]
    objects.sort(key=lambda item: -int(item[1].sum()))
    for label, (annotation, pixels) in enumerate(objects, start=1):
        mask[pixels] = classes[annotation["category_id"]]
        labels[pixels] = label
    return mask, labels


def annotation_pixels(annotation: Any, height: int, width: int, classes: Mapping[int, int]) -> np.ndarray:
    """Return the bool ``(height, width)`` pixels of one annotation's segmentation (polygons or RLE);
    SampleError ``bad_annotation`` naming what is wrong with it."""
    from pycocotools import mask as coco_mask

    if not isinstance(annotation, dict):
        raise SampleError(f"annotation {annotation!r} is not an object", ErrorKind.BAD_ANNOTATION)
    name = f"annotation {annotation.get('id')}"
    if annotation.get("category_id") not in classes:
        raise SampleError(f"{name} has category_id {annotation.get('category_id')!r}, not one of the file's categories",
                          ErrorKind.BAD_ANNOTATION)
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        polygons = [polygon for polygon in segmentation if isinstance(polygon, list)]
        if not polygons or len(polygons) != len(segmentation) or any(
                len(polygon) < 6 or len(polygon) % 2 or not all(isinstance(v, (int, float)) for v in polygon)
                for polygon in polygons):
            raise SampleError(f"{name}: each polygon must be a list of at least 3 x,y points (6 numbers)",
                              ErrorKind.BAD_ANNOTATION)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise SampleError(f"{name}: its RLE is of size {segmentation['size']}, its image {height}x{width} "
                              "(height, width)", ErrorKind.BAD_ANNOTATION)
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width or any(not isinstance(v, int) or v < 0 for v in counts):
                raise SampleError(f"{name}: its RLE counts cover {sum(map(int, counts))} pixels, its image "
                                  f"{height * width}", ErrorKind.BAD_ANNOTATION)
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode()}
        else:
            raise SampleError(f"{name}: RLE counts must be a list or a compressed string", ErrorKind.BAD_ANNOTATION)
    else:
        raise SampleError(f"{name} has no polygon or RLE segmentation", ErrorKind.BAD_ANNOTATION)
    try:
        return coco_mask.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises several types for a malformed RLE string
        raise SampleError(f"{name}: its RLE cannot be decoded ({type(exc).__name__}: {exc})",
                          ErrorKind.BAD_ANNOTATION) from exc


def write_coco(output: str, shards: Iterable[list[Sample]], storage_config: StorageConfig | None) -> list[str]:
    """Write the samples as ``<output>/<key>.png`` and one ``<output>/annotations.json``: each
    object of a sample (its instance labels, else its mask's connected components per class) an
    RLE annotation of its class; return the image URLs and the file's URL."""
    from pycocotools import mask as coco_mask

    images, annotations, urls, classes = [], [], [], 1
    for samples in shards:
        for key, files in samples:
            url = storage.join_url(output, f"{key}.png")
            storage.write_bytes(url, files["image"], storage_config)
            urls.append(url)
            height, width = decode_image(files["image"]).shape[:2]
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{key}.png", "height": height, "width": width})
            if "mask" not in files:
                continue
            mask = decode_mask(files["mask"], 255, (height, width))
            classes = max(classes, int(mask.max()))
            for class_index, pixels in sample_objects(mask, files.get("instances"), (height, width)):
                rle = coco_mask.encode(np.asfortranarray(pixels.astype(np.uint8)))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_index,
                                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                                    "area": int(pixels.sum()), "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                                    "iscrowd": 0})
    categories = [{"id": index, "name": f"class_{index}", "supercategory": "object"} for index in range(1, classes + 1)]
    url = storage.join_url(output, ANNOTATIONS_FILE)
    document = {"images": images, "annotations": annotations, "categories": categories}
    storage.write_bytes(url, json.dumps(document).encode(), storage_config)
    return [*urls, url]


def sample_objects(mask: np.ndarray, instances: bytes | None, shape: tuple[int, int]) -> Iterable[tuple[int, np.ndarray]]:
    """Yield ``(class, pixels)`` of each object of a sample: its instance labels (class by majority of
    the mask), else the connected components of each class."""
    if instances:
        labels = decode_instances(instances, shape)
        for label in np.unique(labels[labels > 0]):
            pixels = labels == label
            yield int(np.bincount(mask[pixels]).argmax()), pixels
        return
    from skimage import measure

    for class_index in range(1, int(mask.max()) + 1):
        components = measure.label(mask == class_index, connectivity=2)
        for label in range(1, int(components.max()) + 1):
            yield class_index, components == label
