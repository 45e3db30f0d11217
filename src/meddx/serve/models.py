"""A served run: its :class:`~meddx.engine.predict.Predictor` (loaded once), its model card and the work one
upload needs (reading through the one pixel reader, the task's result dict, heat maps, masks and boxes)."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError
from meddx.utils.io import file_digest

INTENDED_USE = ("Research and teaching only: not a medical device, not for diagnosis or treatment decisions. "
                "Valid only for inputs like the training data ({data}: {modality} images, {channels} channel(s), "
                "{shape} pixels, {dtype}); 2D images of another size are resized with a notice. Performance on "
                "other scanners, sites, populations or preprocessing is unknown; the test metrics in this card come "
                "from the run's own {split} split and say nothing about other data.")
_CARD_METRICS = ("headline", "split", "n", "ci_level", "n_bootstrap", "runtime", "checkpoint", "ece", "loss")


@dataclass
class ServedModel:
    name: str
    run: Path
    predictor: Any  # meddx.engine.predict.Predictor
    card: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)  # PyTorch-model work (heat maps, masks, boxes)
    _mapper: Any = None

    @property
    def is_classifier(self) -> bool:
        return bool(self.predictor.task.is_classifier)

    def mapper(self) -> Any:
        """A PyTorch Predictor of its own for heat maps (hooks and gradients never touch the serving model)."""
        if self._mapper is None:
            from meddx.engine.predict import Predictor

            self._mapper = Predictor(self.run, device="cpu", runtime="torch")
        return self._mapper


def run_name(run: str | Path) -> str:
    p = Path(run)
    return (p.parent if p.is_file() else p).name


def load_model(run: str | Path, runtime: str = "auto", device: str = "cpu") -> ServedModel:
    from meddx.engine.predict import Predictor

    path = Path(run)
    predictor = Predictor(path, device=device, runtime=runtime)
    folder = path.parent if path.is_file() else path
    return ServedModel(run_name(path), folder, predictor, model_card(run_name(path), folder, predictor))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def card_metrics(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Scalar test metrics with their 95% CIs (``<name>_ci``) and the calibration error (ECE)."""
    if not metrics:
        return None
    out = {k: metrics[k] for k in _CARD_METRICS if k in metrics}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in out:
            out[k] = v
            if isinstance(metrics.get(f"{k}_ci"), list):
                out[f"{k}_ci"] = metrics[f"{k}_ci"]
    return out


def model_card(name: str, folder: Path, predictor: Any) -> dict[str, Any]:
    from meddx.data.contract import Expected

    meta, data = predictor.meta, _read_json(folder / "data.json")
    expected = Expected.from_meta(meta)
    spec = {"channels": expected.channels, "shape": list(expected.shape), "dtype": expected.dtype,
            "value_range": list(expected.value_range) if expected.value_range else None,
            "intensity_mapping": expected.mapping or "file defaults (8/16-bit scaled by bit depth, DICOM LUT/window)",
            "resize_2d": expected.resize}
    metrics = card_metrics(_read_json(folder / "metrics.json"))
    data_name = data.get("name") or meta.get("dataset")
    return {
        "name": name, "task": predictor.task.name, "kind": meta.get("kind"), "classes": list(predictor.classes),
        "model": meta.get("model"), "input": spec,
        "training_data": {"name": data_name, "source": data.get("source"), "modality": meta.get("modality"),
                          "n_train": data.get("n_train"), "n_val": data.get("n_val"), "n_test": data.get("n_test")},
        "test_metrics": metrics,
        "intended_use": INTENDED_USE.format(data=data_name, modality=meta.get("modality") or "unknown",
                                            channels=expected.channels, shape="x".join(map(str, expected.shape)),
                                            dtype=expected.dtype, split=(metrics or {}).get("split", "test")),
        "runtime": predictor.runtime.label, "meddx_version": meddx_version(),
        "files": [{"name": Path(f).name, "sha256": file_digest(f)} for f in predictor.files],
        "compression": meta.get("compression"),
    }


def meddx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meddx")
    except PackageNotFoundError:
        return "unknown (not installed)"


def read_input(served: ServedModel, path: Path) -> tuple[Any, list[str]]:
    """The upload as the model's input tensor, plus the conversion notices (the contract's, as text)."""
    from meddx.data.contract import read_input as conformed_input

    tensor, notices = conformed_input(path, served.predictor.meta)
    return tensor, [n.text for n in notices]


def b64png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def predict_other(served: ServedModel, path: Path, label: str) -> dict[str, Any]:
    """Segmentation / detection: the task's dict, its mask or boxes picture inline (base64 PNG), no paths."""
    import tempfile

    with served.lock, tempfile.TemporaryDirectory(prefix="meddx-serve-") as out:
        result = served.predictor.predict_files([path], out)[0]
        for key in ("mask", "image_with_boxes"):
            if key in result:
                produced = Path(result.pop(key))
                if produced.suffix == ".png":
                    result[f"{key}_png"] = b64png(produced.read_bytes())
    result["file"] = label
    return result


def explain_one(served: ServedModel, raw: Any, method: str, target: int) -> dict[str, Any]:
    """A heat map for one conformed image: the 3-panel overlay PNG, and for 2D the colour map and the input as
    separate PNGs (the web page blends them with an opacity slider)."""
    from meddx.explain.methods import explain, get_method
    from meddx.explain.overlay import overlay_png, volume_strip_png

    spec = get_method(method)
    if not served.is_classifier:
        raise MeddxError(f"heat-map explanations are for classification runs; {served.name} is "
                         f"{served.predictor.task.name}")
    with served.lock:
        mapper = served.mapper()
        heat = explain(mapper.model, mapper.norm(raw[None]), [target], spec.name, model_name=mapper.meta["model"])[0]
    classes = served.predictor.classes
    title = f"{spec.label} for {classes[target]}"
    overlay = volume_strip_png(raw, heat, title) if heat.ndim == 3 else overlay_png(raw, heat, title)
    out = {"method": spec.name, "label": spec.label, "target": classes[target], "overlay_png": b64png(overlay)}
    if heat.ndim == 2:
        out["heatmap_png"], out["image_png"] = b64png(heatmap_png(heat)), b64png(image_png(raw))
    return out


def image_png(raw: Any, side: int = 256) -> bytes:
    """The model's input as a PNG (nearest-neighbour enlarged to about ``side`` pixels for display)."""
    import io

    import numpy as np
    from PIL import Image

    from meddx.explain.overlay import display_image

    img = Image.fromarray((display_image(raw) * 255).round().astype(np.uint8))
    scale = max(1, side // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def heatmap_png(heat: Any, side: int = 256) -> bytes:
    """A 2D map in [0, 1] as an RGBA PNG (jet colours, opacity growing with the map), bilinear-enlarged."""
    import io

    import matplotlib
    import numpy as np
    from PIL import Image

    from meddx.explain.overlay import CMAP

    h = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    scale = max(1, side // max(h.shape))
    big = np.asarray(Image.fromarray(h).resize((h.shape[1] * scale, h.shape[0] * scale), Image.BILINEAR))
    rgba = matplotlib.colormaps[CMAP](np.clip(big, 0, 1))
    rgba[..., 3] = np.clip(big, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()
