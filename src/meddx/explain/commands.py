"""``meddx explain``: a typer sub-app over :func:`meddx.explain.files.explain_files` (option parsing only)."""

from __future__ import annotations

from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()


@app.command("explain")
@user_errors
def explain(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder or .safetensors checkpoint"),
    images: list[Path] = typer.Argument(..., metavar="FILE...",
                                         help="PNG/JPEG/.npy files (.npy volumes for 3D models)"),
    method: str = typer.Option("gradcam", help="gradcam | gradcam++ | hirescam | xgradcam | layercam | scorecam | "
                               "eigencam | integrated_gradients | saliency | occlusion (all work on 3D volumes too) | "
                               "attention (the network's own; attention models only: ag/cbam/mil/vit)"),
    target: str | None = typer.Option(None, help="class name or index to explain (default: each image's "
                                      "predicted class)"),
    out: Path | None = typer.Option(None, help="output folder (default: RUN/explanations)"),
    layer: str | None = typer.Option(None, help="CAM layer, dotted path (default: the model's registered layer)"),
    save_maps: bool = typer.Option(False, help="also write the maps as maps.npz (float32, input resolution)"),
    device: str = typer.Option("auto"),
) -> None:
    """Heat maps for image files: overlay PNGs, explanations.json (map statistics) and gallery.html."""
    from meddx.data.pixels import check_inputs

    check_inputs(run, images)  # a missing/empty/unreadable file fails before torch and the run load
    from meddx.explain.files import explain_files, map_caption
    from meddx.explain.methods import get_method

    spec = get_method(method)  # an unknown method fails before the run loads
    result = explain_files(run, images, method=spec.name, target=target, out=out, layer=layer, device=device,
                           save_maps=save_maps)
    for item in result["items"]:
        typer.echo(f"{item['file']}: {item['predicted']} (p={item['probability']:.3f}), "
                   f"{spec.label} {map_caption(spec, repr(item['target']))} -> {item['png']}")
    typer.echo(f"runtime: {result['runtime']} ({', '.join(result['model_files'])})")
    typer.echo(f"gallery: {result['gallery']}")
    typer.echo(f"statistics: {result['json']}")
