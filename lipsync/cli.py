"""`lipsync prepare | train | render | dub | eval`: parse arguments, call the library, report.

Input errors (`lipsync.errors.InputError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lipsync.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lip-sync dubbing engine.")
console = Console(stderr=True)

EXIT_INPUT_ERROR = 2


@app.callback()
def _group() -> None:
    """Lip-sync dubbing engine: prepare | train | render | dub | eval."""


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT_ERROR)


@contextlib.contextmanager
def input_errors_exit_2() -> Iterator[None]:
    try:
        yield
    except InputError as e:
        fail(str(e))
    except ValueError as e:  # bad option values found by config parsing
        fail(str(e))


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar, shown from the first update on (so an early input error prints one
    line only); yields `update(done, total, extra="")`."""
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )
    task = None

    def update(done: int, total: int | None = None, extra: str = "") -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total, extra=extra)
        bar.update(task, completed=done, total=total, extra=extra)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


@app.command()
def prepare(
    video: str = typer.Argument(..., help="talking-head video (path or URI)"),
    name: str = typer.Option(..., "--name", help="character name"),
    out: str = typer.Option(..., "--out", help="dataset directory to create (path or URI)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
    preview: Optional[str] = typer.Option(None, "--preview", help="write a contact sheet of crops (PNG)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default configs/prepare.yaml)"),
    set_: List[str] = typer.Option([], "--set", help="config override key=value (repeatable)"),
) -> None:
    """Turn a talking-head video into a character dataset."""
    from lipsync import config as C
    from lipsync.data.prepare import prepare as run_prepare

    with input_errors_exit_2():
        cfg = C.load(C.PrepareConfig, config or "prepare", set_)
        with progress_bar(f"prepare {name}") as update:
            result = run_prepare(video, name, out, cfg, overwrite=overwrite, preview_uri=preview,
                                 progress=lambda d, t: update(d, max(d, t)))
    fps = result.n_frames / result.seconds if result.seconds else 0.0
    console.print(
        f"prepared [bold]{name}[/] -> {out}: {result.n_frames} frames, {result.duration:.2f} s audio, "
        f"faces found in {result.faces_found}/{result.n_frames} frames, {result.seconds:.1f} s ({fps:.0f} frames/s)"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
