"""CLI commands of meddx.explain, registered on the main app by `meddx.cli` (heavy imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add this capability's commands to `app`: ``meddx explain``."""
    from meddx.cli import user_errors

    app.command("explain")(user_errors(explain))


def explain(
    run: Path = typer.Argument(..., help="run folder or .safetensors checkpoint"),
    images: list[Path] = typer.Argument(..., help="PNG/JPEG/.npy files (.npy volumes for 3D models)"),
    method: str = typer.Option("gradcam", help="gradcam | gradcam++ | hirescam | xgradcam | layercam | scorecam | "
                               "eigencam | integrated_gradients | saliency | occlusion (all work on 3D volumes too)"),
    target: str | None = typer.Option(None, help="class name or index to explain (default: each image's "
                                      "predicted class)"),
    out: Path | None = typer.Option(None, help="output folder (default: RUN/explanations)"),
    layer: str | None = typer.Option(None, help="CAM layer, dotted path (default: the model's registered layer)"),
    save_maps: bool = typer.Option(False, help="also write the maps as maps.npz (float32, input resolution)"),
    device: str = typer.Option("auto"),
) -> None:
    """Heat maps for image files: overlay PNGs, explanations.json (map statistics) and gallery.html."""
    from meddx.explain.methods import get_method

    spec = get_method(method)  # an unknown method fails before anything is loaded
    result = explain_files(run, images, method=spec.name, target=target, out=out, layer=layer, device=device,
                           save_maps=save_maps)
    for item in result["items"]:
        typer.echo(f"{item['file']}: {item['predicted']} (p={item['probability']:.3f}), "
                   f"{spec.label} for {item['target']!r} -> {item['png']}")
    typer.echo(f"gallery: {result['gallery']}")
    typer.echo(f"statistics: {result['json']}")


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
