"""The ``edgeft`` command line: parses options and calls the library.

This is the only module that imports click. Library functions raise
:class:`edgeft.errors.EdgeftError`; :func:`main` turns them into a one-line
``error: ...`` on stderr and the error's exit code. Heavy imports (TensorFlow,
converters) happen inside the library functions, so ``edgeft --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from edgeft import __version__
from edgeft.errors import EdgeftError


def _emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _csv_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeft")
def cli() -> None:
    """edgeft: fine-tune, quantize, export and benchmark image classifiers for edge devices."""


# --------------------------------------------------------------------------- finetune
@cli.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--backbone", default="mobilenet_v2", show_default=True,
              help="Backbone from the registry (see `edgeft backbones`).")
@click.option("--alpha", type=float, default=None,
              help="Width multiplier for MobileNet backbones (0.35/0.5/0.75/1.0/1.3/1.4).")
@click.option("--image-size", type=int, default=None, help="Square input size in pixels [backbone default].")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a path to an .h5 file.")
@click.option("--strategy", type=click.Choice(["head", "partial", "full"]), default=None,
              help="head: frozen backbone; partial: then fine-tune top blocks; full: then the whole network. "
                   "[head; full with --weights none]")
@click.option("--unfreeze", type=int, default=None, help="Top backbone blocks to fine-tune with --strategy partial [3].")
@click.option("--epochs", type=int, default=None, help="Epochs of the head phase [20].")
@click.option("--fine-tune-epochs", type=int, default=None, help="Epochs of the fine-tuning phase [10].")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", type=float, default=None, help="Head-phase learning rate [1e-3].")
@click.option("--fine-tune-learning-rate", type=float, default=None,
              help="Fine-tuning learning rate [1e-4 partial, 1e-5 full, 1e-3 from scratch].")
@click.option("--patience", type=int, default=5, show_default=True, help="Early-stopping patience on val loss.")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True,
              help="Validation fraction when DATA_DIR has no val/ folder.")
@click.option("--class-weight", type=click.Choice(["none", "auto"]), default="none", show_default=True)
@click.option("--augment/--no-augment", default=None, help="Random flip/rotation/zoom/contrast in training "
              "[on for partial and full, off for head].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mixed-precision", is_flag=True, help="Train with a mixed float16 policy (GPU hosts).")
@click.option("--distribute", type=click.Choice(["none", "mirrored"]), default="none", show_default=True,
              help="mirrored: tf.distribute.MirroredStrategy over all local GPUs.")
@click.option("--min-accuracy", type=float, default=None,
              help="Exit with code 4 when the final validation accuracy is below this fraction.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--force", is_flag=True, help="Overwrite a complete run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run directory to write.")
def finetune(data_dir: Path, as_json: bool, **options: Any) -> None:
    """Train a classifier on DATA_DIR (class folders, or train/ val/ [test/] class folders)."""
    from edgeft.training.config import FinetuneConfig
    from edgeft.training.finetune import main_finetune

    config = FinetuneConfig.from_options(data_dir=data_dir, **options)
    summary = main_finetune(config)
    if as_json:
        _emit_json(summary)


# --------------------------------------------------------------------------- evaluate
@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def evaluate(run_dir: Path, data_dir: Path | None, as_json: bool) -> None:
    """Re-evaluate RUN_DIR on its validation split, or on the class folders in DATA_DIR."""
    from edgeft.evaluation import main_evaluate

    summary = main_evaluate(run_dir, data_dir)
    if as_json:
        _emit_json(summary)


# --------------------------------------------------------------------------- backbones
@cli.command()
@click.option("--json", "as_json", is_flag=True)
def backbones(as_json: bool) -> None:
    """List the backbones edgeft can fine-tune."""
    from edgeft.backbones import REGISTRY

    rows = [spec.describe() for spec in REGISTRY.values()]
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        alphas = ",".join(str(a) for a in row["alphas"]) or "-"
        click.echo(f"{row['name']:<22} size {row['default_size']:<4} alphas {alphas:<28} {row['summary']}")


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--json", "as_json", is_flag=True)
def demo(out_dir: Path, as_json: bool) -> None:
    """Run the whole pipeline on the UCI handwritten digits that scikit-learn ships."""
    from edgeft.demo import main_demo

    summary = main_demo(out_dir)
    if as_json:
        _emit_json(summary)


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning edgeft errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="edgeft", standalone_mode=False)
    except EdgeftError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted; run again with --resume to continue where it stopped", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted; run again with --resume to continue where it stopped", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)


if __name__ == "__main__":
    main()
