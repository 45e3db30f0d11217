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
    """Library form of ``meddx explain``: writes PNGs, ``explanations.json`` and ``gallery.html`` under ``out``."""
    import numpy as np
    import torch

    from meddx.engine.predict import Predictor
    from meddx.errors import MeddxError
    from meddx.explain.methods import explain, get_method, resolve_layer, resolve_target
    from meddx.explain.overlay import gallery_html, map_stats, overlay_png, volume_strip_png
    from meddx.utils.io import atomic_path, write_json_atomic, write_text_atomic

    spec = get_method(method)
    if not images:
        raise MeddxError("no image files given")
    predictor = Predictor(run, device=device)
    meta, classes = predictor.meta, predictor.classes
    if meta.get("task", "classification") != "classification":
        raise MeddxError(f"heat-map explanations are for classification runs, this is a {meta['task']} run", run)
    k = resolve_target(target, classes)
    layer_name = resolve_layer(predictor.model, layer, meta["model"])[1] if spec.needs_layer else None
    raw = torch.stack([predictor.load_image(p) for p in images])
    probs = predictor.predict_tensor(raw)
    targets = [int(np.argmax(p)) if k is None else k for p in probs]
    x = predictor.norm(raw)
    maps = explain(predictor.model, x, targets, spec.name, layer=layer, model_name=meta["model"])

    run_path = Path(run)
    out_dir = Path(out) if out is not None else (run_path if run_path.is_dir() else run_path.parent) / "explanations"
    out_dir.mkdir(parents=True, exist_ok=True)
    items, cards, seen = [], [], set()
    for path, img, heat, p, t in zip(images, raw, maps, probs, targets):
        path = Path(path)
        stem = path.stem
        while stem in seen:
            stem = f"{stem}-{len(seen)}"
        seen.add(stem)
        pred = int(np.argmax(p))
        title = (f"{path.name}: predicted {classes[pred]} (p={p[pred]:.2f}) | {spec.label} for "
                 f"{classes[t]} (p={p[t]:.2f})")
        png = volume_strip_png(img, heat, title) if heat.ndim == 3 else overlay_png(img, heat, title)
        png_path = out_dir / f"{stem}.{spec.name}.png"
        with atomic_path(png_path) as tmp:
            tmp.write_bytes(png)
        items.append({"file": str(path), "png": str(png_path), "predicted": classes[pred],
                      "probability": float(p[pred]), "target": classes[t], "target_index": t,
                      "target_probability": float(p[t]),
                      "probabilities": {c: float(v) for c, v in zip(classes, p)}, "map": map_stats(heat)})
        cards.append({"png": png, "caption": f"{path.name}: {classes[pred]} ({p[pred]:.2f})"})
    json_path, gallery_path = out_dir / "explanations.json", out_dir / "gallery.html"
    record = {"run": str(run), "model": meta["model"], "method": spec.name, "layer": layer_name,
              "map_values": "per image: negative evidence clipped, min-max scaled to [0, 1], input resolution",
              "items": items}
    write_json_atomic(json_path, record)
    note = (f"{spec.label} ({spec.summary}); model {meta['model']}" + (f", layer {layer_name}" if layer_name else "")
            + ". Red marks where the method puts the most weight (maps scaled to 0..1 per image).")
    write_text_atomic(gallery_path, gallery_html(cards, f"meddx explanations: {spec.label}", note))
    if save_maps:
        with atomic_path(out_dir / "maps.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, maps=maps, files=np.array([str(p) for p in images]))
    return record | {"json": str(json_path), "gallery": str(gallery_path)}
