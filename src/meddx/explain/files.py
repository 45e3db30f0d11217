"""``explain_files``: heat maps for image files of a trained run, written as overlay PNGs, JSON and a gallery.

The library form of ``meddx explain`` (a capability function above the engine: it loads the run through
:class:`meddx.engine.predict.Predictor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def explain_files(run: str | Path, images: list[str | Path], *, method: str = "gradcam", target: Any = None,
                  out: str | Path | None = None, layer: str | None = None, device: str = "auto",
                  save_maps: bool = False) -> dict[str, Any]:
    """Library form of ``meddx explain``: writes PNGs, ``explanations.json`` and ``gallery.html`` under ``out``.

    The predicted class and probabilities come from the run's default runtime (int8 for a ptq/qat run, as
    ``meddx predict`` gives them); the heat maps need gradients and come from the PyTorch model.
    """
    import numpy as np
    import torch

    from meddx.engine.predict import Predictor
    from meddx.errors import MeddxError
    from meddx.explain.methods import explain, get_method, resolve_layer, resolve_target

    spec = get_method(method)
    if not images:
        raise MeddxError("no image files given")
    scorer = Predictor(run, device=device, runtime="auto")
    meta, classes = scorer.meta, scorer.classes
    if meta.get("task", "classification") != "classification":
        raise MeddxError(f"heat-map explanations are for classification runs, this is a {meta['task']} run", run)
    mapper = scorer.torch_model(device)
    k = resolve_target(target, classes)
    layer_name = resolve_layer(mapper.model, layer, meta["model"])[1] if spec.needs_layer else None
    raw = torch.stack([scorer.load_image(p) for p in images])
    probs = scorer.predict_tensor(raw)
    targets = [int(np.argmax(p)) if k is None else k for p in probs]
    maps = explain(mapper.model, mapper.norm(raw), targets, spec.name, layer=layer, model_name=meta["model"])
    out_dir = _out_dir(run, out)
    items, cards = _write_overlays(out_dir, spec, classes, images, (raw, maps, probs, targets))
    files = list(dict.fromkeys(str(f) for f in scorer.files + mapper.files))  # scoring and maps may share one
    record = {"run": str(run), "model": meta["model"], "method": spec.name, "layer": layer_name,
              "runtime": scorer.runtime.label, "model_files": files,
              "map_values": "per image: negative evidence clipped, min-max scaled to [0, 1], input resolution",
              "items": items}
    return record | _write_summary(out_dir, record, spec, cards, maps if save_maps else None, images)


def _out_dir(run: str | Path, out: str | Path | None) -> Path:
    run_path = Path(run)
    out_dir = Path(out) if out is not None else (run_path if run_path.is_dir() else run_path.parent) / "explanations"
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def map_caption(spec: Any, target: str) -> str:
    """What a map shows: "for <target>", or, for a class-agnostic method (attention, Eigen-CAM), that it is the
    same map whatever the class."""
    return "(the same for every class)" if spec.class_agnostic else f"for {target}"


def _write_overlays(out_dir: Path, spec: Any, classes: list[str], images: list[str | Path],
                    arrays: tuple[Any, Any, Any, list[int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One overlay PNG per image (a strip of slices for volumes); the JSON items and the gallery cards."""
    import numpy as np

    from meddx.explain.overlay import map_stats, overlay_png, volume_strip_png
    from meddx.utils.io import atomic_path

    items, cards, seen = [], [], set()
    for path, img, heat, p, t in zip(images, *arrays):
        path = Path(path)
        stem = path.stem
        while stem in seen:
            stem = f"{stem}-{len(seen)}"
        seen.add(stem)
        pred = int(np.argmax(p))
        title = (f"{path.name}: predicted {classes[pred]} (p={p[pred]:.2f}) | {spec.label} "
                 f"{map_caption(spec, f'{classes[t]} (p={p[t]:.2f})')}")
        png = volume_strip_png(img, heat, title) if heat.ndim == 3 else overlay_png(img, heat, title)
        png_path = out_dir / f"{stem}.{spec.name}.png"
        with atomic_path(png_path) as tmp:
            tmp.write_bytes(png)
        items.append({"file": str(path), "png": str(png_path), "predicted": classes[pred],
                      "probability": float(p[pred]), "target": classes[t], "target_index": t,
                      "target_probability": float(p[t]),
                      "probabilities": {c: float(v) for c, v in zip(classes, p)}, "map": map_stats(heat)})
        cards.append({"png": png, "caption": f"{path.name}: {classes[pred]} ({p[pred]:.2f})"})
    return items, cards


def _write_summary(out_dir: Path, record: dict[str, Any], spec: Any, cards: list[dict[str, Any]], maps: Any,
                   images: list[str | Path]) -> dict[str, str]:
    """``explanations.json``, ``gallery.html`` and (when ``maps`` is given) ``maps.npz``."""
    import numpy as np

    from meddx.explain.overlay import gallery_html
    from meddx.utils.io import atomic_path, write_json_atomic, write_text_atomic

    json_path, gallery_path = out_dir / "explanations.json", out_dir / "gallery.html"
    write_json_atomic(json_path, record)
    layer = record["layer"]
    note = (f"{spec.label} ({spec.summary}); model {record['model']}" + (f", layer {layer}" if layer else "")
            + f"; probabilities from {record['runtime']}"
            + ". Red marks where the method puts the most weight (maps scaled to 0..1 per image).")
    write_text_atomic(gallery_path, gallery_html(cards, f"meddx explanations: {spec.label}", note))
    if maps is not None:
        with atomic_path(out_dir / "maps.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, maps=maps, files=np.array([str(p) for p in images]))
    return {"json": str(json_path), "gallery": str(gallery_path)}
