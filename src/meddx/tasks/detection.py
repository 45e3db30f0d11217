"""Object detection with centre heat maps (CenterNet): 2D boxes (mAP) and 3D nodules (FROC / CPM).

Targets are built per batch from the boxes after augmentation: a Gaussian peak per object at its
centre cell in its class's heat map (sigma = 0.54 x size / 6 per axis, as TTFNet), and at that cell the
object's log-size and sub-cell offset. Loss: CenterNet's penalty-reduced focal loss on the heat map plus
L1 on log-sizes and offsets at the centre cells. Decoding: 3x3(x3) max-pool peaks, the top
``max_detections`` per image.

Coordinates: 2D boxes ``[x1, y1, x2, y2]`` and 3D boxes ``[z1, y1, x1, z2, y2, x2]`` in pixels/voxels,
inclusive-exclusive (pixel ``i`` covers ``[i, i + 1)``); internally both are handled in grid order
(``[y1, x1, y2, x2]`` in 2D). Nodule centres for FROC use the phantom's convention (voxel ``i``'s
centre is ``i``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.data.detection_augment import augment
from meddx.errors import MeddxError
from meddx.metrics.detection import cpm_bootstrap, nodule_reference
from meddx.report.detection import draw_boxes_png
from meddx.tasks.base import EvalRequest

GAUSS_ALPHA = 0.54  # TTFNet's heat-map spread: sigma = alpha * size / 6
MIN_SIGMA = 0.4  # grid cells, so that tiny objects still get a peak with some support


def to_grid_order(boxes: torch.Tensor, dims: int) -> torch.Tensor:
    """2D ``[x1, y1, x2, y2]`` <-> ``[y1, x1, y2, x2]`` (its own inverse); 3D boxes are already in grid order."""
    return boxes[:, [1, 0, 3, 2]] if dims == 2 and len(boxes) else boxes


class DetectionTask:
    """CenterNet targets, loss, decoding and metrics for ``spatial_dims`` 2 (mAP) or 3 (FROC / CPM)."""

    name = "detection"
    default_model = "centernet_slim"
    default_steps = None  # the recipe's schedule (meddx.engine.recipe)
    default_minutes = None
    is_classifier = False

    def __init__(self, num_classes: int, spatial_dims: int = 2, max_detections: int = 100,
                 score_floor: float = 0.001) -> None:
        if spatial_dims not in (2, 3):
            raise MeddxError(f"detection supports 2D and 3D images, not {spatial_dims}D")
        self.num_classes, self.spatial_dims = num_classes, spatial_dims
        self.max_detections, self.score_floor = max_detections, score_floor
        self.tta = spatial_dims == 3  # flip averaging in evaluate/predict (not per-epoch validation): cheap in 3D
        self.monitor = "map50" if spatial_dims == 2 else "cpm"

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> DetectionTask:
        if data.task != "detection":
            raise MeddxError(f"--task detection needs boxes, but {data.name!r} is a {data.task} data set", data.source)
        return cls(data.num_classes, data.spatial_dims)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> DetectionTask:
        return cls(meta["num_outputs"], meta.get("spatial_dims", 2))

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def default_batch_size(self) -> int:
        """Images per step when ``--batch-size`` is not given."""
        return 8 if self.spatial_dims == 2 else 4

    # ---------------------------------------------------------------- training

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None, generator: torch.Generator | None
                   ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Normalised images and per-image targets (grid-order boxes, labels), augmented together.

        Augmentation (unless ``--augment none``): random flips along every axis; in 2D also a random zoom
        (0.75-1.33) with translation and brightness/contrast jitter; boxes follow exactly.
        """
        raw = split.images[idx].to(device).float()
        targets = []
        for i in idx.tolist():
            t = split.labels[i]
            targets.append({"boxes": to_grid_order(torch.as_tensor(t["boxes"], dtype=torch.float32),
                                                   self.spatial_dims).to(device),
                            "labels": torch.as_tensor(t["labels"], dtype=torch.long).to(device)})
        if policy is not None:
            raw, targets = augment(raw, targets, generator, zoom=self.spatial_dims == 2)
        return normalize(raw), targets

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        output = model(x)
        return self.loss(output, y, x.shape[-1] / output.shape[-1])

    def loss(self, output: torch.Tensor, targets: list[dict[str, torch.Tensor]], stride: float) -> torch.Tensor:
        """Focal loss on the heat map + L1 on log-size and offset at object centres (weights 1, 1, 1)."""
        c, d = self.num_classes, self.spatial_dims
        grid = tuple(output.shape[2:])
        heat_t, ind, size_t, off_t = self.encode(targets, grid, stride, output.device)
        logits = output[:, :c].float()
        focal = focal_loss(logits, heat_t)
        if ind.numel() == 0:
            return focal + 0.0 * output.sum()
        flat = output[:, c:].float().flatten(2)  # (B, 2d, cells)
        picked = flat[ind[:, 0], :, ind[:, 1]]  # (objects, 2d)
        size_l = F.l1_loss(picked[:, :d], size_t)
        off_l = F.l1_loss(picked[:, d:], off_t)
        return focal + size_l + off_l

    def encode(self, targets: list[dict[str, torch.Tensor]], grid: tuple[int, ...], stride: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heat maps (B, C, *grid), centre indices (objects, 2: image, flat cell), log-sizes, offsets."""
        d = self.spatial_dims
        heat = torch.zeros((len(targets), self.num_classes, *grid), device=device)
        axes = [torch.arange(g, device=device, dtype=torch.float32) for g in grid]
        inds, sizes, offs = [], [], []
        for b, t in enumerate(targets):
            boxes = t["boxes"]
            if len(boxes) == 0:
                continue
            centre = (boxes[:, :d] + boxes[:, d:]) / 2 / stride
            size = (boxes[:, d:] - boxes[:, :d]) / stride
            cell = centre.floor().clamp_min(0)
            cell = torch.minimum(cell, torch.tensor(grid, device=device, dtype=torch.float32) - 1)
            sigma = (GAUSS_ALPHA * size / 6).clamp_min(MIN_SIGMA)
            g = torch.ones((len(boxes), *grid), device=device)
            for a in range(d):
                shape = [len(boxes)] + [1] * d
                shape[a + 1] = grid[a]
                dist = (axes[a][None, :] - cell[:, a:a + 1]) / sigma[:, a:a + 1]
                g = g * torch.exp(-0.5 * dist ** 2).view(shape)
            for k in range(len(boxes)):
                cls = int(t["labels"][k])
                heat[b, cls] = torch.maximum(heat[b, cls], g[k])
            flat = torch.zeros(len(boxes), dtype=torch.long, device=device)
            for a in range(d):
                flat = flat * grid[a] + cell[:, a].long()
            inds.append(torch.stack([torch.full_like(flat, b), flat], 1))
            sizes.append(torch.log(size.clamp_min(1e-3)))
            offs.append(centre - cell)
        if not inds:
            empty = torch.zeros((0, d), device=device)
            return heat, torch.zeros((0, 2), dtype=torch.long, device=device), empty, empty
        return heat, torch.cat(inds), torch.cat(sizes), torch.cat(offs)

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def detect(self, model: nn.Module, images: torch.Tensor, normalize: Normalization, *,
               device: torch.device | str = "cpu", batch_size: int = 16,
               tta: bool = False) -> list[dict[str, np.ndarray]]:
        """Per image: ``boxes`` (k, 4|6, the data's axis order), ``scores``, ``labels`` (+ 3D ``centres``).

        ``tta``: average the centre heat maps over the flips of every axis (4 passes in 2D, 8 in 3D, as
        LUNA16 entries do); sizes and offsets come from the unflipped pass.
        """
        device = torch.device(device)
        model.eval()
        out: list[dict[str, np.ndarray]] = []
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size].to(device))
            pred = model(x).float()
            if tta:
                pred = self._flip_averaged(model, x, pred)
            stride = x.shape[-1] / pred.shape[-1]
            out.extend(self.decode(pred, stride))
        return out

    def _flip_averaged(self, model: nn.Module, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``pred`` with its heat-map logits replaced by the logit of the flip-averaged probabilities."""
        from meddx.tasks.base import axis_flips

        c = self.num_classes
        heat = torch.sigmoid(pred[:, :c])
        flips = axis_flips(self.spatial_dims)
        for f in flips:
            heat += torch.sigmoid(model(x.flip(f)).float()[:, :c]).flip(f)
        heat = (heat / (len(flips) + 1)).clamp(1e-6, 1 - 1e-6)
        return torch.cat([torch.logit(heat), pred[:, c:]], 1)

    def decode(self, output: torch.Tensor, stride: float) -> list[dict[str, np.ndarray]]:
        """Peaks of the heat maps (max-pool suppression) -> boxes with scores, at most ``max_detections``."""
        c, d = self.num_classes, self.spatial_dims
        heat = torch.sigmoid(output[:, :c])
        pool = F.max_pool2d if d == 2 else F.max_pool3d
        peaks = heat * (pool(heat, 3, 1, 1) == heat)
        grid = output.shape[2:]
        cells = int(np.prod(grid))
        results = []
        for b in range(output.shape[0]):
            k = min(self.max_detections, peaks[b].numel())
            scores, idx = peaks[b].flatten().topk(k)
            keep = scores > self.score_floor
            scores, idx = scores[keep], idx[keep]
            cls, flat = idx // cells, idx % cells
            pos = []
            rest = flat.clone()
            for a in reversed(range(d)):
                pos.append(rest % grid[a])
                rest = rest // grid[a]
            pos = torch.stack(pos[::-1], 1).float()  # (k, d) grid order
            reg = output[b, c:].flatten(1)[:, flat].T  # (k, 2d)
            centre = (pos + reg[:, d:]) * stride
            size = torch.exp(reg[:, :d].clamp(max=10)) * stride
            boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
            det = {"boxes": to_grid_order(boxes, d).cpu().numpy().astype(np.float32),
                   "scores": scores.cpu().numpy().astype(np.float32), "labels": cls.cpu().numpy().astype(np.int64)}
            if d == 3:
                det["centres"] = (centre - 0.5).cpu().numpy().astype(np.float32)  # voxel-index convention
            results.append(det)
        return results

    # ---------------------------------------------------------------- metrics

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        """2D: mAP@0.5 and COCO mAP; 3D: CPM and sensitivity at 1 FP/scan (monitored: map50 / cpm)."""
        dets = self.detect(model, split.images, normalize, device=device, batch_size=min(batch_size, 16))
        m = self.score(split.labels, dets, [str(k) for k in range(self.num_classes)])
        if self.spatial_dims == 2:
            return {"map50": m["map50"], "map": m["map"]}
        return {"cpm": m["cpm"], "sens_at_1fp": m["sensitivity"][1.0]}

    def score(self, truth: list[dict[str, np.ndarray]], dets: list[dict[str, np.ndarray]],
              class_names: list[str]) -> dict[str, Any]:
        from meddx.metrics.detection import coco_map, froc

        if self.spatial_dims == 2:
            return coco_map(truth, dets, class_names)
        return froc(dets, [nodule_reference(t) for t in truth])

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics (2D: COCO mAP, mAP@0.5 per class; 3D: FROC, CPM with a bootstrap CI over scans).

        Writes ``detections_<split>.json`` (per image: id, boxes, scores, labels) to ``out_dir``; 2D boxes are
        in the original image's pixels when ``split_extra`` holds each image's ``orig_size`` (w, h).
        """
        from meddx.utils.io import write_json_atomic

        split, out_dir, n_bootstrap, class_names = request.split, request.out_dir, request.n_bootstrap, \
            request.class_names
        dets = self.detect(model, split.images, request.normalize, device=request.device,
                           batch_size=min(request.batch_size, 16), tta=self.tta)
        metrics: dict[str, Any] = {"task": "detection", "spatial_dims": self.spatial_dims, "n": len(split)}
        metrics.update(self.score(split.labels, dets, class_names))
        if self.spatial_dims == 3 and n_bootstrap:
            metrics["cpm_ci"] = cpm_bootstrap(dets, [nodule_reference(t) for t in split.labels], n_bootstrap)
        metrics["headline"] = headline(metrics)
        if out_dir is not None:
            ids = split.ids or [str(i) for i in range(len(split))]
            from meddx.data.detection import boxes_to_original

            sizes = request.split_extra.get("orig_size") if self.spatial_dims == 2 else None
            loaded = tuple(split.images.shape[2:])
            records = []
            for k, (i, det) in enumerate(zip(ids, dets)):
                extra: dict[str, Any] = {}
                if sizes is not None:  # back from the training resolution to the file's pixels
                    det = det | {"boxes": boxes_to_original(det["boxes"], loaded, sizes[k])}
                    extra = {"image_size": list(sizes[k])}
                records.append(detection_record(i, det, class_names) | extra)
            write_json_atomic(Path(out_dir) / f"detections_{request.split_name}.json", records)
        return metrics, {"detections": dets, "truth": split.labels, "images": split.images, "ids": split.ids}

    def report_sections(self, context: dict[str, Any]) -> list[Any]:
        """Example images with predicted and true boxes, per-class AP (2D) or the FROC curve (3D)."""
        from meddx.report.detection import detection_section

        return [s for s in (detection_section(context),) if s is not None]

    # ---------------------------------------------------------------- prediction on files

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None,
                      threshold: float = 0.3) -> list[dict[str, Any]]:
        """Boxes for image files: one dict per file (boxes in the file's pixels, score >= ``threshold``).

        2D: also writes ``<name>_boxes.png`` (the image with the boxes drawn) to ``out_dir`` (default:
        beside each input). 3D models take ``.npy`` volumes of the training shape.
        """
        if not paths:
            raise MeddxError("no image files given")
        results = []
        for p in paths:
            path = Path(p)
            img = predictor.load_image(path)
            det = self.detect(predictor.model, img[None], predictor.norm, device=predictor.device, tta=self.tta)[0]
            keep = det["scores"] >= threshold
            det = {k: v[keep] for k, v in det.items()}
            rec: dict[str, Any] = {"file": str(path)}
            if self.spatial_dims == 2:
                from meddx.data.detection import boxes_to_original
                from meddx.data.images import read_image

                original = read_image(path, channels=3)
                oh, ow = original.shape[1:]
                det["boxes"] = boxes_to_original(det["boxes"], tuple(img.shape[1:]), (ow, oh))
                target = (Path(out_dir) if out_dir else path.parent) / f"{path.stem}_boxes.png"
                draw_boxes_png(target, original, det, predictor.classes)
                rec["image_with_boxes"] = str(target)
                rec["image_size"] = [int(ow), int(oh)]
            rec.update(detection_record(None, det, predictor.classes))
            results.append(rec)
        return results


# --------------------------------------------------------------------------- helpers


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4), normalised by the object count."""
    pos = target.eq(1).float()
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = ((1 - p) ** 2 * log_p * pos).sum()
    neg_loss = (p ** 2 * (1 - target) ** 4 * log_not_p * (1 - pos)).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp_min(1)


def detection_record(image_id: str | None, det: dict[str, np.ndarray], class_names: list[str]) -> dict[str, Any]:
    """JSON-ready detections of one image (boxes rounded to 0.1 px)."""
    rec: dict[str, Any] = {} if image_id is None else {"id": image_id}
    rec["detections"] = [
        {"label": class_names[int(c)], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
        | ({"centre": [round(float(v), 2) for v in det["centres"][i]]} if "centres" in det else {})
        for i, (b, s, c) in enumerate(zip(det["boxes"], det["scores"], det["labels"]))]
    return rec


def headline(m: dict[str, Any]) -> str:
    """One line for the CLI."""
    if m.get("spatial_dims") == 3:
        ci = m.get("cpm_ci")
        ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci and all(np.isfinite(ci)) else ""
        sens = "  ".join(f"{fp:g}:{v:.3f}" for fp, v in m["sensitivity"].items())
        return (f"CPM {m['cpm']:.4f}{ci_text}  sensitivity @FP/scan {sens}  nodules={m['n_nodules']} "
                f"scans={m['n_scans']}")
    per = "  ".join(f"{k} {v:.3f}" for k, v in m.get("ap50_per_class", {}).items())
    return f"mAP@0.5 {m['map50']:.4f}  COCO mAP@[.5:.95] {m['map']:.4f}  AP@0.5 per class: {per}  n={m['n']}"
