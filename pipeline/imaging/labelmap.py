"""A data set's label map: how its masks store their classes (:class:`LabelMap`), read from the
``labels.*`` keys or a ``labels.yaml`` (:meth:`LabelMap.from_mapping`); masks are read through it
by :mod:`pipeline.imaging.labels`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

IGNORE = 255  # a mask pixel that is not labelled (a declared ignore value, a window's padding): no loss, no metric
MAX_CLASSES = 255  # class indices 0..254; 255 is IGNORE


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """How a data set stores its labels: class names, and the stored values (or RGB colours) of each
    class and of "not labelled".

    ``values`` maps stored values to class indices (every other value is an error), ``colors`` maps
    RGB colours (a colour mask, or a palette PNG read as its colours); ``ignore`` and
    ``ignore_colors`` are read as :data:`IGNORE`. With neither ``values`` nor ``colors`` the stored
    values are the class indices ``0..num_classes-1``, and a mask holding only 0 and 255 (255 not
    declared ignore) is binary. ``num_classes`` 0 means "the model's".
    """

    num_classes: int = 0
    names: tuple[str, ...] = ()
    values: tuple[tuple[int, int], ...] = ()
    colors: tuple[tuple[tuple[int, int, int], int], ...] = ()
    ignore: tuple[int, ...] = ()
    ignore_colors: tuple[tuple[int, int, int], ...] = ()

    @property
    def declared(self) -> bool:
        """Return whether any stored value, colour or ignore value is declared (else: plain class indices)."""
        return bool(self.values or self.colors or self.ignore or self.ignore_colors)

    def with_classes(self, num_classes: int) -> LabelMap:
        """Return this map for a model of ``num_classes``; ValueError where its classes do not fit."""
        highest = max([index for _, index in (*self.values, *self.colors)], default=-1)
        if self.num_classes and self.num_classes != num_classes:
            raise ValueError(f"the label map names {self.num_classes} classes ({', '.join(self.names)}) but the model "
                             f"has {num_classes}; give the model's classes, or use a model trained on these labels")
        if highest >= num_classes:
            raise ValueError(f"the label map maps a value to class {highest} but the model has {num_classes} classes "
                             f"(0..{num_classes - 1})")
        return dataclasses.replace(self, num_classes=num_classes)

    def class_names(self) -> tuple[str, ...]:
        """Return the names of the classes: declared, else background, class_1, ..."""
        return self.names or ("background", *(f"class_{index}" for index in range(1, self.num_classes)))

    def to_json(self) -> dict[str, Any]:
        """Return the map as the mapping :meth:`from_mapping` reads (the keys of ``labels.yaml``)."""
        data: dict[str, Any] = {"classes": list(self.class_names())}
        if self.values:
            data["values"] = {str(stored): index for stored, index in self.values}
        if self.colors:
            data["colors"] = {",".join(map(str, colour)): index for colour, index in self.colors}
        if self.ignore or self.ignore_colors:
            data["ignore"] = [*self.ignore, *(",".join(map(str, colour)) for colour in self.ignore_colors)]
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "labels") -> LabelMap:
        """Return the label map a ``labels.yaml`` (or the ``labels.*`` keys) describes; ValueError naming
        the key of ``where`` and the fix.

        ``classes``: names in class order (a list, or comma-separated text); ``values``: stored value
        → class (index or name); ``colors``: colour (``"R,G,B"``, ``"#RRGGBB"`` or ``[R, G, B]`` as
        a list entry ``[R, G, B, class]``) → class; ``ignore``: stored values (or colours) meaning
        "not labelled".
        """
        data = dict(data or {})
        unknown = sorted(set(data) - {"classes", "values", "colors", "ignore"})
        if unknown:
            raise ValueError(f"{where}: unknown key '{unknown[0]}'; a label map has classes, values, colors and ignore")
        names = parse_names(data.get("classes"), where)

        def index_of(target: Any, key: str) -> int:
            if isinstance(target, str) and target.strip() in names:
                return names.index(target.strip())
            if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < MAX_CLASSES:
                if names and target >= len(names):
                    raise ValueError(f"{where}.{key}: class {target} but classes names {len(names)} (0..{len(names) - 1})")
                return target
            raise ValueError(f"{where}.{key}: {target!r} is no class; give a class index 0..{MAX_CLASSES - 1} or a name "
                             "from classes")

        values = {}
        for stored, target in as_items(data.get("values"), f"{where}.values"):
            value = parse_value(stored, f"{where}.values")
            values[value] = index_of(target, f"values[{stored}]")
        colors = {}
        for stored, target in as_items(data.get("colors"), f"{where}.colors"):
            colors[parse_colour(stored, f"{where}.colors")] = index_of(target, f"colors[{stored}]")
        ignore, ignore_colors = [], []
        items = data.get("ignore")
        for item in ([] if items is None else items if isinstance(items, list) else [items]):
            if isinstance(item, int) and not isinstance(item, bool):
                ignore.append(parse_value(item, f"{where}.ignore"))
            else:
                ignore_colors.append(parse_colour(item, f"{where}.ignore"))
        both = sorted(set(values) & set(ignore))
        if both:
            raise ValueError(f"{where}: value {both[0]} is both a class (values) and ignored (ignore); keep one")
        return cls(num_classes=len(names), names=names, values=tuple(sorted(values.items())),
                   colors=tuple(sorted(colors.items())), ignore=tuple(sorted(set(ignore))),
                   ignore_colors=tuple(sorted(set(ignore_colors))))


def parse_names(names: Any, where: str) -> tuple[str, ...]:
    """Return class names given as a list or comma-separated text (empty when not given)."""
    if names is None or names == "":
        return ()
    items = names.split(",") if isinstance(names, str) else names if isinstance(names, list) else None
    if items is None or not all(isinstance(name, (str, int)) for name in items):
        raise ValueError(f"{where}.classes: give the class names as a list, e.g. [background, cat, dog]")
    found = tuple(str(name).strip() for name in items)
    if len(found) < 2 or len(set(found)) != len(found) or not all(found):
        raise ValueError(f"{where}.classes: {len(found)} names {list(found)}; give at least two distinct names, "
                         "background first")
    if len(found) > MAX_CLASSES:
        raise ValueError(f"{where}.classes: {len(found)} classes; at most {MAX_CLASSES} (255 marks unlabelled pixels)")
    return found


def as_items(mapping: Any, where: str) -> list[tuple[Any, Any]]:
    """Return a mapping's (key, value) pairs, or a list of ``[..., class]`` entries as (key, class)."""
    if mapping is None:
        return []
    if isinstance(mapping, Mapping):
        return list(mapping.items())
    if isinstance(mapping, list) and all(isinstance(item, list) and len(item) >= 2 for item in mapping):
        return [(item[:-1] if len(item) > 2 else item[0], item[-1]) for item in mapping]
    raise ValueError(f"{where}: give a mapping of stored value to class, e.g. {{0: 0, 38: 1}}")


def parse_value(value: Any, where: str) -> int:
    """Return a stored mask value (0..65535) given as a number or its text."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if isinstance(value, bool) or not 0 <= number <= 65535:
        raise ValueError(f"{where}: {value!r} is no stored mask value; give integers 0..65535")
    return number


def parse_colour(value: Any, where: str) -> tuple[int, int, int]:
    """Return an RGB colour given as ``"R,G,B"``, ``"#RRGGBB"`` or ``[R, G, B]``."""
    text = value if isinstance(value, str) else ""
    try:
        if text.startswith("#") and len(text) == 7:
            parts = [int(text[i:i + 2], 16) for i in (1, 3, 5)]
        else:
            parts = [int(str(part).strip()) for part in (text.split(",") if text else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 3 or not all(0 <= part <= 255 for part in parts):
        raise ValueError(f"{where}: {value!r} is no colour; give \"R,G,B\" (0..255 each) or \"#RRGGBB\"")
    return parts[0], parts[1], parts[2]
