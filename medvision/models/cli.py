"""``medvision weights``: place ImageNet checkpoints in the torch hub cache and list them.

Mounted under the main CLI as ``weights``:

    medvision weights import densenet121-a639ec97.pth --arch densenet121
    medvision weights list
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from medvision.errors import MedvisionError
from medvision.models.registry import get_spec, list_models
from medvision.models.weights import cache_dir, cached_weights_path, import_weights

__all__ = ["app"]

app = typer.Typer(
    help="ImageNet weights of the registered backbones, kept in the torch hub cache"
    " ($TORCH_HOME/hub/checkpoints). Import a downloaded file where there is no network.",
    no_args_is_help=True,
)


def _fail(exc: MedvisionError) -> NoReturn:
    typer.echo(f"error: {exc.one_line()}", err=True)
    raise typer.Exit(code=2)


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="The downloaded checkpoint, e.g. densenet121-a639ec97.pth.")],
    arch: Annotated[str, typer.Option("--arch", help="The backbone it belongs to, e.g. densenet121.")],
) -> None:
    """Check FILE's sha256 prefix and architecture, then copy it into the torch hub cache."""
    try:
        destination = import_weights(file, arch)
    except MedvisionError as exc:
        _fail(exc)
    typer.echo(str(destination))


@app.command("list")
def list_command() -> None:
    """List the registered backbones, their ImageNet weights file and whether it is cached."""
    rows = [("backbone", "weights", "file", "cached")]
    try:
        for name in list_models():
            spec = get_spec(name)
            cached = "yes" if cached_weights_path(spec).is_file() else "no"
            rows.append((name, spec.weights_tag, spec.weights_file, cached))
    except MedvisionError as exc:
        _fail(exc)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    typer.echo(f"cache folder: {cache_dir()}")
