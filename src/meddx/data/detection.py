"""Detection data: Pascal VOC XML folders, COCO JSON files and the CT phantom's nodules, as boxes per image.

A detection :class:`~meddx.data.dataset.Split` holds images as usual and, as ``labels``, one dict per
image: ``boxes`` float32 (k, 4) ``[x1, y1, x2, y2]`` pixels (2D) or (k, 6) ``[z1, y1, x1, z2, y2, x2]``
voxels (3D), ``labels`` int64 (k,) class indices, and for nodules ``centres`` (k, 3) and ``diameters``
(k,). Images are resized to a common training size on loading (boxes scaled with them); the original
size is kept per image in ``bundle.extra[split]["orig_size"]`` so predictions can be mapped back.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.dataset import DataBundle, Split
from meddx.data.validate import validate_detection_split  # noqa: F401 (its old home; tests import it here)
from meddx.errors import MeddxError

DEFAULT_LONG_SIDE = 320  # 2D training resolution (longer image side): BCCD's 640x480 -> 320x240
PHANTOM2D_SIZE = 64
PHANTOM3D_SHAPE = (48, 64, 64)
PHANTOM2D_SPLITS = {"train": 1000, "val": 200, "test": 400}
PHANTOM3D_SPLITS = {"train": 240, "val": 40, "test": 100}


def load_detection_data(spec: str, size: int | None = None, seed: int = 0) -> DataBundle:
    """``phantom`` (2D slices), ``phantom3d`` (volumes), a VOC folder or a COCO ``.json`` -> DataBundle.

    ``size`` is the longer image side for 2D sets (sizes under 64, such as the classification default
    28, mean "unset": 320 px for photos, 64 px for phantom slices) and the in-plane side for phantom volumes.
    """
    size = size if size and size >= 64 else None
    path = Path(spec).expanduser()
    if spec == "phantom":
        return load_phantom_boxes(size or PHANTOM2D_SIZE, seed=seed)
    if spec == "phantom3d":
        shape = PHANTOM3D_SHAPE if size is None else (size * 3 // 4, size, size)
        return load_phantom_nodules(shape, seed=seed)
    if path.suffix.lower() == ".json":
        return load_coco(path, long_side=size or DEFAULT_LONG_SIDE, seed=seed)
    if path.is_dir():
        root = path / "BCCD" if not (path / "Annotations").is_dir() and (path / "BCCD" / "Annotations").is_dir() \
            else path
        if (root / "Annotations").is_dir():
            return load_voc(root, long_side=size or DEFAULT_LONG_SIDE, seed=seed)
        raise MeddxError("not a detection data set: expected a VOC folder (Annotations/, JPEGImages/) "
                         "or a COCO .json file", path)
    if not path.exists():
        raise MeddxError("no such detection data: not 'phantom', 'phantom3d', a VOC folder or a COCO .json", spec)
    raise MeddxError("unsupported detection data (expected a VOC folder or a COCO .json file)", spec)


# --------------------------------------------------------------------------- Pascal VOC


def read_voc_xml(path: str | Path, class_names: list[str] | None = None
                 ) -> tuple[np.ndarray, list[str], tuple[int, int], int]:
    """One VOC annotation: (boxes (k, 4) float32 x1 y1 x2 y2, class names, (width, height), degenerate count).

    Degenerate boxes (``xmax <= xmin`` or ``ymax <= ymin``) are dropped and counted; a box outside the
    image, an unknown class (when ``class_names`` is given) or an empty/unparsable file is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise MeddxError("annotation file not found", path)
    if not path.read_bytes().strip():
        raise MeddxError("empty annotation file", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MeddxError(f"not a valid VOC XML file ({exc})", path) from None
    try:
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (TypeError, ValueError):
        raise MeddxError("VOC annotation without <size><width>/<height>", path) from None
    boxes, names, degenerate = [], [], 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        try:
            x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise MeddxError(f"object {name!r} without a numeric <bndbox>", path) from None
        if class_names is not None and name not in class_names:
            raise MeddxError(f"unknown class {name!r}; expected one of {', '.join(class_names)}", path)
        if x2 <= x1 or y2 <= y1:
            degenerate += 1
            continue
        check_box_inside([x1, y1, x2, y2], width, height, path)
        boxes.append([x1, y1, x2, y2])
        names.append(name)
    return np.asarray(boxes, np.float32).reshape(-1, 4), names, (width, height), degenerate


def check_box_inside(box: list[float], width: int, height: int, where: str | Path) -> None:
    """A clear error for a box leaving its ``width`` x ``height`` image (1 px tolerance: VOC pixels are 1-based)."""
    x1, y1, x2, y2 = box
    if x1 < -1 or y1 < -1 or x2 > width + 1 or y2 > height + 1:
        raise MeddxError(f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {width}x{height} image", where)


def load_voc(root: str | Path, long_side: int = DEFAULT_LONG_SIDE, seed: int = 0,
             class_names: list[str] | None = None) -> DataBundle:
    """A Pascal VOC folder (Annotations/, JPEGImages/, ImageSets/Main/{train,val,test}.txt) -> DataBundle.

    Without the split lists, images are split 70/10/20 at random (``seed``). Classes are ordered as first
    seen in the (sorted) annotation files unless ``class_names`` is given.
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise MeddxError("no .xml annotations", ann_dir)
    parsed = {p.stem: read_voc_xml(p, class_names) for p in xmls}
    names = class_names or _class_order([n for _, ns, _, _ in parsed.values() for n in ns])
    if not names:
        raise MeddxError("the annotations hold no objects", ann_dir)
    degenerate = sum(d for *_, d in parsed.values())
    if degenerate:
        warnings.warn(f"{root}: dropped {degenerate} degenerate boxes (xmax <= xmin or ymax <= ymin)", stacklevel=2)
    split_ids = _voc_splits(root, sorted(parsed), seed)
    records = {}
    for stem, (boxes, labels, wh, _) in parsed.items():
        image = _find_image(img_dir, stem)
        records[stem] = (image, boxes, np.asarray([names.index(n) for n in labels], np.int64), wh)
    return _bundle_2d(root.name, names, split_ids, records, long_side, source=str(root),
                      extra={"degenerate_boxes_dropped": degenerate})


def _class_order(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _voc_splits(root: Path, stems: list[str], seed: int) -> dict[str, list[str]]:
    lists = root / "ImageSets" / "Main"
    if all((lists / f"{s}.txt").is_file() for s in ("train", "val", "test")):
        out = {}
        for s in ("train", "val", "test"):
            ids = [line.strip() for line in (lists / f"{s}.txt").read_text().splitlines() if line.strip()]
            missing = [i for i in ids if i not in stems]
            if missing:
                raise MeddxError(f"{s}.txt names {len(missing)} images without annotation, e.g. {missing[0]}", lists)
            out[s] = ids
        return out
    return _random_splits(stems, seed)


def _random_splits(ids: list[str], seed: int) -> dict[str, list[str]]:
    if len(ids) < 3:
        raise MeddxError(f"need at least 3 annotated images to split into train/val/test, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val, n_test = max(1, round(0.1 * len(ids))), max(1, round(0.2 * len(ids)))
    pick = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {k: [ids[i] for i in sorted(v)] for k, v in pick.items()}


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise MeddxError(f"no image for annotation {stem!r}", folder)


# --------------------------------------------------------------------------- COCO JSON


def read_coco_json(path: str | Path) -> tuple[list[str], list[tuple[Path, np.ndarray, np.ndarray, tuple[int, int]]]]:
    """A COCO detection file -> (class names, per image (file, boxes x1 y1 x2 y2, class indices, (w, h))).

    Images are looked up beside the JSON file, in ``images/`` beside it, or as written. Crowd
    annotations are skipped; degenerate boxes are dropped with a warning; boxes outside the image are errors.
    """
    path = Path(path)
    if not path.is_file():
        raise MeddxError("annotation file not found", path)
    text = path.read_text()
    if not text.strip():
        raise MeddxError("empty annotation file", path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeddxError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
    if not isinstance(doc, dict) or not doc.get("images") or not doc.get("categories"):
        raise MeddxError("COCO file without images or categories", path)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: k for k, c in enumerate(cats)}
    per_image: dict[Any, list[dict]] = {im["id"]: [] for im in doc["images"]}
    for ann in doc.get("annotations", []):
        if ann.get("iscrowd"):
            continue
        if ann.get("image_id") not in per_image or ann.get("category_id") not in cat_index:
            raise MeddxError(f"annotation {ann.get('id')} names an unknown image or category", path)
        per_image[ann["image_id"]].append(ann)
    out, degenerate = [], 0
    for im in doc["images"]:
        w, h = int(im["width"]), int(im["height"])
        boxes, labels = [], []
        for ann in per_image[im["id"]]:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if bw <= 0 or bh <= 0:
                degenerate += 1
                continue
            check_box_inside([x, y, x + bw, y + bh], w, h, f"{path} (image {im['file_name']})")
            boxes.append([x, y, x + bw, y + bh])
            labels.append(cat_index[ann["category_id"]])
        file = next((p for p in (path.parent / im["file_name"], path.parent / "images" / im["file_name"],
                                 Path(im["file_name"])) if p.is_file()), None)
        if file is None:
            raise MeddxError(f"image {im['file_name']!r} not found beside the annotation file", path)
        out.append((file, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), (w, h)))
    if degenerate:
        warnings.warn(f"{path}: dropped {degenerate} degenerate boxes (width or height <= 0)", stacklevel=2)
    return [c["name"] for c in cats], out


def load_coco(path: str | Path, long_side: int = DEFAULT_LONG_SIDE, seed: int = 0) -> DataBundle:
    """A COCO JSON file -> DataBundle, images split 70/10/20 at random (``seed``)."""
    path = Path(path)
    names, images = read_coco_json(path)
    records = {f"{i}:{file.name}": (file, boxes, labels, wh) for i, (file, boxes, labels, wh) in enumerate(images)}
    return _bundle_2d(path.stem, names, _random_splits(list(records), seed), records, long_side, source=str(path))


# --------------------------------------------------------------------------- shared 2D assembly


def target_shape(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the longer side ``long_side``, both multiples of 16 (the detectors' total stride)."""
    s = long_side / max(width, height)
    return max(16, int(round(height * s / 16)) * 16), max(16, int(round(width * s / 16)) * 16)


def _bundle_2d(name: str, class_names: list[str], split_ids: dict[str, list[str]],
               records: dict[str, tuple[Path, np.ndarray, np.ndarray, tuple[int, int]]], long_side: int,
               source: str, extra: dict[str, Any] | None = None) -> DataBundle:
    from PIL import Image

    first = records[split_ids["train"][0] if split_ids["train"] else next(iter(records))]
    th, tw = target_shape(*first[3], long_side)
    splits, extras = {}, dict(extra or {})
    for split, ids in split_ids.items():
        images = np.zeros((len(ids), 3, th, tw), np.uint8)
        targets, sizes = [], []
        for i, key in enumerate(ids):
            file, boxes, labels, (w, h) = records[key]
            try:
                with Image.open(file) as im:
                    if im.size != (w, h):
                        raise MeddxError(f"image is {im.size[0]}x{im.size[1]}, its annotation says {w}x{h}", file)
                    images[i] = np.moveaxis(np.asarray(im.convert("RGB").resize((tw, th), Image.BILINEAR)), -1, 0)
            except OSError as exc:
                raise MeddxError(f"not a readable image ({exc.__class__.__name__})", file) from None
            scale = np.asarray([tw / w, th / h] * 2, np.float32)
            targets.append({"boxes": np.clip(boxes * scale, 0, [tw, th, tw, th]).astype(np.float32),
                            "labels": labels})
            sizes.append((w, h))
        splits[split] = Split(torch.from_numpy(images), targets, list(ids))
        extras[split] = {"orig_size": sizes}
    return DataBundle(name=name, task="detection", class_names=class_names, modality="microscopy" if "bccd" in
                      name.lower() else "photo", source=source, extra=extras, **splits)


# --------------------------------------------------------------------------- CT phantom


def load_phantom_boxes(size: int = PHANTOM2D_SIZE, seed: int = 0, splits: dict[str, int] | None = None) -> DataBundle:
    """Phantom CT slices (lung window, 8-bit) with one box per nodule (class ``nodule``)."""
    from meddx.data.phantom import make_slices, to_uint8

    out, extra = {}, {}
    for i, (name, n) in enumerate((splits or PHANTOM2D_SPLITS).items()):
        ph = make_slices(n, size=size, seed=seed * 10 + i)
        images = torch.from_numpy(np.ascontiguousarray(to_uint8(ph.images)[:, None]))
        targets = [{"boxes": b.astype(np.float32).reshape(-1, 4), "labels": np.zeros(len(b), np.int64)}
                   for b in ph.boxes]
        out[name] = Split(images, targets, [f"phantom-{name}-{k}" for k in range(n)])
        extra[name] = {"orig_size": [(size, size)] * n}
    return DataBundle(name="phantom-boxes", task="detection", class_names=["nodule"], modality="ct",
                      source=f"phantom(size={size}, seed={seed})", extra=extra, **out)


def load_phantom_nodules(shape: tuple[int, int, int] = PHANTOM3D_SHAPE, seed: int = 0,
                         splits: dict[str, int] | None = None) -> DataBundle:
    """Phantom CT volumes (lung window, 8-bit, (N, 1, D, H, W)) with 3D boxes, centres and diameters per nodule."""
    from meddx.data.phantom import make_volumes, to_uint8

    out: dict[str, Split] = {}
    extra: dict[str, Any] = {}
    for i, (name, n) in enumerate((splits or PHANTOM3D_SPLITS).items()):
        ph = make_volumes(n, shape=tuple(shape), seed=seed * 10 + i)
        images = torch.from_numpy(np.ascontiguousarray(to_uint8(ph.images)[:, None]))
        targets = [{"boxes": b.astype(np.float32).reshape(-1, 6), "labels": np.zeros(len(b), np.int64),
                    "centres": c.astype(np.float32).reshape(-1, 3), "diameters": d.astype(np.float32).reshape(-1)}
                   for b, c, d in zip(ph.boxes, ph.centres, ph.diameters)]
        out[name] = Split(images, targets, [f"phantom3d-{name}-{k}" for k in range(n)])
        extra[name] = {"spacing": list(ph.spacing)}
        extra["spacing"] = list(ph.spacing)  # mm per voxel (z, y, x), stored in checkpoints
    return DataBundle(name="phantom3d-nodules", task="detection", class_names=["nodule"], modality="ct",
                      source=f"phantom3d(shape={tuple(shape)}, seed={seed})", extra=extra, **out)


def boxes_to_original(boxes: np.ndarray, loaded_hw: tuple[int, int], orig_wh: tuple[int, int]) -> np.ndarray:
    """Map 2D boxes from the loaded (resized) image back to the original image's pixels."""
    h, w = loaded_hw
    ow, oh = orig_wh
    return np.asarray(boxes, np.float32) * np.asarray([ow / w, oh / h] * 2, np.float32)


def count_boxes(targets: list[dict[str, np.ndarray]], num_classes: int) -> list[int]:
    """Boxes per class over a split (for summaries and tests)."""
    labels = np.concatenate([t["labels"] for t in targets]) if targets else np.zeros(0, np.int64)
    return np.bincount(labels, minlength=num_classes).tolist()
