"""``medvision weights``: place ImageNet checkpoints in the torch hub cache and list them.

    medvision weights import densenet121-a639ec97.pth --arch densenet121
    medvision weights list

torch is imported inside the commands (``medvision weights --help`` does not load it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(
    help="ImageNet weights of the registered backbones, kept in the torch hub cache"
    " ($TORCH_HOME/hub/checkpoints). Import a downloaded file where there is no network.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="The downloaded checkpoint, e.g. densenet121-a639ec97.pth.")],
    arch: Annotated[str, typer.Option("--arch", help="The backbone it belongs to, e.g. densenet121.")],
) -> None:
    """Check FILE's sha256 prefix and architecture, then copy it into the torch hub cache."""
    from medvision.models.weights import import_weights

    typer.echo(str(import_weights(file, arch)))


@app.command("list")
def list_command() -> None:
    """List the registered backbones, their ImageNet weights file and whether it is cached."""
    from medvision.models.registry import get_spec, list_models
    from medvision.models.weights import cache_dir, cached_weights_path

    rows = [("backbone", "weights", "file", "cached")]
    for name in list_models():
        spec = get_spec(name)
        cached = "yes" if cached_weights_path(spec).is_file() else "no"
        rows.append((name, spec.weights_tag, spec.weights_file, cached))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    typer.echo(f"cache folder: {cache_dir()}")
