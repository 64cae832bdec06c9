"""Every kind of error a row can carry: one registry, used at every raise site.

An error row's ``error_kind`` column holds one of :class:`ErrorKind`'s values, set where the error
is raised, so reports count kinds from the column, never from the wording of ``error``.
docs/segmentation.md lists the same kinds with what they mean (a test checks both agree).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ErrorKind(str, enum.Enum):
    """The error kinds of rows; the value is what the ``error_kind`` column holds."""

    UNREADABLE_SHARD = "unreadable_shard"
    UNSAFE_KEY = "unsafe_key"
    MISSING_KEY = "missing_key"
    MISSING_IMAGE = "missing_image"
    DUPLICATE_KEY = "duplicate_key"
    UNSUPPORTED_MEMBER = "unsupported_member"
    CORRUPT_IMAGE = "corrupt_image"
    UNSUPPORTED_IMAGE = "unsupported_image"
    IMAGE_TOO_LARGE = "image_too_large"
    MULTI_PAGE_IMAGE = "multi_page_image"
    BAD_MASK = "bad_mask"
    MASK_SIZE_MISMATCH = "mask_size_mismatch"
    MASK_CLASSES = "mask_classes"
    BAD_INSTANCES = "bad_instances"
    INSTANCES_SIZE_MISMATCH = "instances_size_mismatch"
    BAD_ANNOTATION = "bad_annotation"
    WRITE_FAILED = "write_failed"
    INTERNAL = "internal"

    def __str__(self) -> str:
        return self.value

    @property
    def meaning(self) -> str:
        """Return what the kind means, as docs/segmentation.md says it."""
        return MEANINGS[self]


MEANINGS = {
    ErrorKind.UNREADABLE_SHARD: "the shard file cannot be read or parsed at all (or its end is cut off)",
    ErrorKind.UNSAFE_KEY: "the key would name a file outside the output (absolute, '..', '.' or empty parts, "
                          "backslash, control characters, '::' or '://')",
    ErrorKind.MISSING_KEY: "a Parquet row has no key",
    ErrorKind.MISSING_IMAGE: "a mask without an image of the same key",
    ErrorKind.DUPLICATE_KEY: "the key was already taken by an earlier image of the same shard (its mask would take "
                             "the same name); the same key in another shard is kept, and reported in run.json",
    ErrorKind.UNSUPPORTED_MEMBER: "a tar member named like an image is a symlink, device, FIFO or directory "
                                  "(never followed)",
    ErrorKind.CORRUPT_IMAGE: "the image file is empty, truncated, corrupt or cannot be read",
    ErrorKind.UNSUPPORTED_IMAGE: "the image decodes but its mode or channels cannot be used (CMYK, float, ...)",
    ErrorKind.IMAGE_TOO_LARGE: "the image header declares more pixels than max_image_pixels",
    ErrorKind.MULTI_PAGE_IMAGE: "a TIFF of several pages and no tiff_page chosen (or the chosen page is not there), "
                                "or an animated GIF, PNG or WebP",
    ErrorKind.BAD_MASK: "the mask file is empty, corrupt, or not a single-channel image",
    ErrorKind.MASK_SIZE_MISMATCH: "the mask's size differs from its image's",
    ErrorKind.MASK_CLASSES: "the mask holds values (or colours) its label map does not declare, or class values the "
                            "model does not have",
    ErrorKind.BAD_INSTANCES: "the instance label image is corrupt, not one channel of integers (float, colour), "
                             "or an 8-bit image whose labels have run out",
    ErrorKind.INSTANCES_SIZE_MISMATCH: "the instance label image's size differs from its image's",
    ErrorKind.BAD_ANNOTATION: "a COCO annotation of the image cannot be drawn (a polygon of under 3 points, an RLE "
                              "of another size, an unknown category, an image entry without its size)",
    ErrorKind.WRITE_FAILED: "the predicted mask could not be written",
    ErrorKind.INTERNAL: "an unexpected failure while preparing the image (a bug: please report it)",
}


class SampleError(ValueError):
    """One image or its ground truth cannot be used; the message says what is wrong (the caller adds the key).

    ``kind`` is the :class:`ErrorKind`'s value, written beside the message.
    """

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.CORRUPT_IMAGE) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind).value


def unreadable_kind(what: str) -> ErrorKind:
    """Return the kind of an unreadable file that holds ``what`` (an image, a mask, an instance label image)."""
    if what == "image":
        return ErrorKind.CORRUPT_IMAGE
    return ErrorKind.BAD_INSTANCES if "instance" in what else ErrorKind.BAD_MASK


def cut_list(items: Sequence[str], most: int) -> str:
    """Return the first ``most`` of ``items`` comma-separated, with "…" when there are more (for messages)."""
    return ", ".join(items[:most]) + (", …" if len(items) > most else "")
