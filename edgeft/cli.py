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


# What fits an 80-column terminal; the files keep every column.
BENCH_TERMINAL_COLUMNS = ("artifact", "target", "threads", "p50_ms", "p90_ms", "peak_rss_mb", "accuracy", "runtime",
                          "error")
EXPORT_TERMINAL_COLUMNS = ("path", "size_bytes", "accuracy", "agreement", "p50_ms", "passed")


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
@click.option("--augment/--no-augment", default=None, help="Random flip/rotation/zoom/contrast in training; with partial/full it applies to the fine-tuning phase "
              "[on for partial and full, off for head].")
@click.option("--augmentation", type=click.Choice(["flip", "full"]), default=None,
              help="With augmentation on: flip (horizontal flip only; partial fine-tuning then trains on cached "
                   "activations) or full (flip, rotation, zoom, contrast; every epoch on images) [flip for partial, "
                   "full otherwise].")
@click.option("--activation-cache-mb", type=int, default=None,
              help="Memory budget of partial fine-tuning's activation cache; above it, or 0, it trains on images "
                   "[a quarter of RAM].")
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


# =========================================================================== bench / targets / doctor
def _ssh_options(ssh_config: Path | None, accept_new_host_key: bool, connect_timeout: int,
                 remote_tmpdir: str, python: str | None) -> Any:
    from edgeft.bench.config import HostKeyPolicy, SshOptions

    return SshOptions(config_file=ssh_config,
                      host_key_policy=HostKeyPolicy.ACCEPT_NEW if accept_new_host_key else HostKeyPolicy.STRICT,
                      connect_timeout_s=connect_timeout, remote_tmpdir=remote_tmpdir, python=python)


def _ssh_click_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--ssh-config", type=click.Path(path_type=Path), default=None,
                     help="ssh config file passed as `ssh -F` [your ~/.ssh/config]."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Record the host key of a device never seen before (a changed key is still refused)."),
        click.option("--connect-timeout", type=int, default=10, show_default=True, help="SSH connect timeout (s)."),
        click.option("--remote-tmpdir", default="/tmp", show_default=True,
                     help="Where the device's temporary run directory is made."),
        click.option("--python", "python", default=None,
                     help="Python on the device [profile's; ~/.edgeft/venv/bin/python if present; python3]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, default=("local",), show_default=True,
              help="local, a profile (`edgeft targets`), [user@]host[:port] or an ssh alias, or a fleet file; repeatable.")
@click.option("--runs", type=int, default=None, help="Timed invocations per artifact and thread count [50].")
@click.option("--duration", "duration_s", type=float, default=None, help="Time each artifact for S seconds instead.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed invocations first.")
@click.option("--threads", default=None, help="Thread counts, e.g. 1,2,4 [the profile's].")
@click.option("--eval", "eval_source", type=click.Path(path_type=Path), default=None,
              help="Labelled evaluation set: a run directory (its val split), class folders, or an .npz.")
@click.option("--eval-limit", type=int, default=None, help="Use at most N evaluation images.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Recommend the fastest artifact within this many accuracy points of the most accurate.")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True,
              help="Give up on a target after S seconds.")
@_ssh_click_options
@click.option("--json", "as_json", is_flag=True, help="Print bench.json on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="BENCH_DIR to write.")
def bench(artifacts: tuple[Path, ...], targets: tuple[str, ...], threads: str | None, as_json: bool,
          ssh_config: Path | None, accept_new_host_key: bool, connect_timeout: int, remote_tmpdir: str,
          python: str | None, **options: Any) -> None:
    """Measure latency, accuracy and memory of ARTIFACT files or EXPORT_DIRs on the device itself."""
    from edgeft.bench import BenchConfig, main_bench
    from edgeft.errors import UsageError

    try:
        thread_counts = tuple(int(t) for t in _csv_list(threads)) or None
    except ValueError:
        raise UsageError(f"--threads takes integers separated by commas, e.g. 1,2,4 (got {threads!r})") from None
    config = BenchConfig(artifacts=tuple(artifacts), targets=tuple(targets), threads=thread_counts,
                         ssh=_ssh_options(ssh_config, accept_new_host_key, connect_timeout, remote_tmpdir, python),
                         **options)
    summary = main_bench(config)
    if as_json:
        _emit_json(summary)
        return
    from edgeft.progress import print_table

    print_table(summary.get("rows", []), BENCH_TERMINAL_COLUMNS, title=f"edgeft bench -> {config.out_dir}")
    for warning in summary.get("warnings") or []:
        click.echo(f"warning: {warning}")
    click.echo(f"all columns: {Path(config.out_dir) / 'bench.md'}, bench.csv, bench.json")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def targets(ctx: click.Context, as_json: bool) -> None:
    """List the target profiles (connection defaults, runtime, delegate, threads); `setup` builds emulated ones."""
    from edgeft.bench import list_targets

    if ctx.invoked_subcommand is not None:
        return
    rows = list_targets()
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        where = {"local": "this computer", "emulated": "this computer (QEMU)"}.get(row["kind"],
                                                                                f"{row['user']}@{row['host']}")
        threads = ",".join(str(t) for t in row["threads"])
        click.echo(f"{row['name']:<16} {where:<26} delegate {row['delegate']:<8} threads {threads:<7} "
                   f"{row['description']}")


@targets.command("setup")
@click.argument("names", nargs=-1, required=True)
@click.option("--userland", type=click.Choice(["bookworm", "bullseye"]), default=None,
              help="Debian arm64 release to emulate [the profile's: bookworm, Python 3.11].")
@click.option("--force", is_flag=True, help="Rebuild even when already set up.")
@click.option("--json", "as_json", is_flag=True)
def targets_setup(names: tuple[str, ...], userland: str | None, force: bool, as_json: bool) -> None:
    """Build the aarch64 userland of emulated targets (rpi4-emu, rpi5-emu) with apt and pip, under ~/.cache."""
    from edgeft.bench.emulated import setup_targets

    results = setup_targets(names, force=force, userland=userland)
    if as_json:
        _emit_json(results)
    else:
        for result in results:
            click.echo(f"{result['userland']:<9} {', '.join(result['cpus'])}: Python {result['python_version']}, "
                       f"{' '.join(f'{k} {v}' for k, v in result['packages'].items())}; "
                       f"{result['size_bytes'] / 1e6:.0f} MB in {result['root']}")


@cli.command()
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", required=True, help="local, a profile, or [user@]host[:port].")
@click.option("--install", is_flag=True, help="Install what is missing into a venv in the device user's home.")
@_ssh_click_options
@click.option("--json", "as_json", is_flag=True)
def doctor(artifacts: tuple[Path, ...], target: str, install: bool, as_json: bool, ssh_config: Path | None,
           accept_new_host_key: bool, connect_timeout: int, remote_tmpdir: str, python: str | None) -> None:
    """Check a device before a run: Python, numpy, interpreters, Edge TPU, CPU, memory; print fixes."""
    from edgeft.bench import DoctorConfig, main_doctor

    config = DoctorConfig(target=target, artifacts=tuple(artifacts), install=install,
                          ssh=_ssh_options(ssh_config, accept_new_host_key, connect_timeout, remote_tmpdir, python))
    report = main_doctor(config)
    if as_json:
        _emit_json(report)
    else:
        facts = report["facts"]
        runtimes = ", ".join(f"{r['name']} {r['version']}" for r in facts.get("tflite_runtimes", [])) or "none"
        click.echo(f"target      {report['target']}")
        click.echo(f"python      {facts.get('python')} ({facts.get('python_command')})")
        click.echo(f"numpy       {facts.get('numpy') or 'missing'}")
        click.echo(f"tflite      {runtimes}")
        click.echo(f"onnxruntime {facts.get('onnxruntime') or 'missing'}")
        click.echo(f"edgetpu     {'present' if facts.get('edgetpu_library') else 'missing'}")
        click.echo(f"cpu         {facts.get('cpu_model')} x{facts.get('cores')} ({facts.get('machine')}), "
                   f"governor {facts.get('governor') or '-'}")
        if facts.get("int8_isa") is not None:
            click.echo(f"simd        {', '.join(facts.get('simd') or []) or 'none found'}; int8 dot product: "
                       f"{', '.join(facts['int8_isa']) or 'none (int8 runs about as fast as float here)'}")
        click.echo(f"memory      {facts.get('mem_available_mb')} MiB free; temperatures {facts.get('temperatures_c')}")
        for problem in report["problems"]:
            click.echo(f"missing: {problem['problem']}\n  fix: {problem['fix']}")
        if report["ok"]:
            click.echo("ok: ready to run edgeft bench")


# --------------------------------------------------------------------------- qat / export
@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--epochs", type=int, default=3, show_default=True, help="QAT fine-tuning epochs.")
@click.option("--learning-rate", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--weight-rounding", type=click.Choice(["adaptive", "nearest"]), default="adaptive", show_default=True,
              help="The weights QAT starts from: rounded for each layer's output on tfmot's grids, or to nearest.")
@click.option("--force", is_flag=True, help="Overwrite a complete run in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="QAT run directory to write.")
def qat(run_dir: Path, as_json: bool, **options: Any) -> None:
    """Quantization-aware fine-tuning of the float run RUN_DIR into a QAT run directory."""
    from edgeft.quantization import main_qat
    from edgeft.quantization.qat import QATConfig

    summary = main_qat(QATConfig(run_dir=run_dir, **options))
    if as_json:
        _emit_json(summary)
    else:
        click.echo(f"QAT run {summary['run_dir']}: val accuracy {summary['val_accuracy']:.4f} "
                   f"(float {summary['float_val_accuracy']:.4f})")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--formats", default="tflite,onnx", show_default=True, help="Comma list of tflite, onnx, edgetpu.")
@click.option("--int8", is_flag=True, help="Add full-integer int8 to every chosen format.")
@click.option("--fp16", is_flag=True, help="Add TFLite float16.")
@click.option("--dynamic", is_flag=True, help="Add TFLite dynamic-range.")
@click.option("--all", "all_", is_flag=True, help="Every format and every precision.")
@click.option("--io-dtype", type=click.Choice(["uint8", "int8", "float32"]), default="uint8", show_default=True,
              help="Input/output type of full-integer TFLite models.")
@click.option("--max-drop", type=float, default=None,
              help="Allowed accuracy loss against Keras, in points [2.0 for int8, 0.5 for the others].")
@click.option("--calib-size", type=int, default=300, show_default=True, help="Calibration images (train split).")
@click.option("--calib-dir", type=click.Path(path_type=Path), default=None, help="Calibrate on images under DIR.")
@click.option("--calib-list", type=click.Path(path_type=Path), default=None,
              help="Calibrate on the images listed in FILE (see calib/README.md).")
@click.option("--calib-seed", type=int, default=0, show_default=True)
@click.option("--calib-sweep", default=None, help="Also report TFLite int8 accuracy at these calibration sizes, "
              "e.g. 10,50,200 (a bare flag value 'auto' means 10,50,200).")
@click.option("--calib-method", "onnx_calib_method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="ONNX int8 calibration method.")
@click.option("--onnx-weights", type=click.Choice(["uint8", "int8", "int8_7bit"]), default=None,
              help="ONNX int8 weight type [uint8 post-training, int8 from a QAT run]: uint8 is accurate on every "
              "CPU; int8 is fastest on CPUs with VNNI or an Arm dot product but saturates on AVX2-only x86.")
@click.option("--keep-float", default=None, metavar="auto|LAYER,...",
              help="Post-training int8 (TFLite, ONNX; never the Edge TPU): keep these Keras layers in float; "
              "'auto' = the 3 layers the per-layer error report finds worst.")
@click.option("--weight-rounding", type=click.Choice(["adaptive", "nearest"]), default="adaptive", show_default=True,
              help="Post-training int8 weights: adaptive = per layer, the rounding that lowers the layer's output "
              "error on the calibration images (full-integer, Edge TPU safe); nearest = the converters' own.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--threads", type=int, default=1, show_default=True, help="Threads for the parity/latency runs.")
@click.option("--in-process", is_flag=True, help="Convert in this process instead of one child per conversion.")
@click.option("--force", is_flag=True,
              help="Replace an earlier export in --out as a whole (once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print export_report.json on stdout.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="EXPORT_DIR to write.")
def export(run_dir: Path, formats: str, calib_sweep: str | None, in_process: bool, as_json: bool,
           **options: Any) -> None:
    """Export RUN_DIR to TFLite / ONNX / Edge TPU, check every artifact against Keras, write export_report.*."""
    from edgeft.export import ExportConfig, main_export

    from edgeft.errors import UsageError

    try:
        sweep = [10, 50, 200] if calib_sweep == "auto" else [int(v) for v in _csv_list(calib_sweep)]
    except ValueError:
        raise UsageError(f"--calib-sweep wants comma-separated sizes such as 10,50,200, got '{calib_sweep}'") from None
    options["keep_float"] = tuple(_csv_list(options.get("keep_float")))
    config = ExportConfig.from_flags(run_dir=run_dir, formats=_csv_list(formats), calib_sweep=sweep,
                                     isolate=not in_process, **options)
    report = main_export(config)
    if as_json:
        _emit_json(report)
        return
    from edgeft.progress import print_table

    print_table(report["artifacts"], EXPORT_TERMINAL_COLUMNS, title=f"edgeft export -> {options['out_dir']}")
    click.echo(f"report: {Path(options['out_dir']) / 'export_report.md'}")


# --------------------------------------------------------------------------- predict
@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=int, default=1, show_default=True, help="Labels per image.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels file (one per line) for a model without edgeft metadata.")
@click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image with every top-k.")
def predict(model: Path, images: tuple[Path, ...], top_k: int, labels: Path | None, threads: int,
            as_json: bool) -> None:
    """Classify IMAGE files and DIRs with MODEL (.tflite/.onnx); exit 9 when any image failed."""
    from edgeft.predict import main_predict

    sys.exit(main_predict(model, images, top_k=top_k, labels=labels, threads=threads, as_json=as_json))


# --------------------------------------------------------------------------- bundle
@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--target", required=True, help="Target profile (see `edgeft targets`).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="APP_DIR to write (new).")
@click.option("--artifact", default=None, help="File name in EXPORT_DIR [the one the target runs best].")
@click.option("--from-bench", type=click.Path(path_type=Path), default=None,
              help="Ship the artifact `edgeft bench` recommended for this target in BENCH_DIR.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Labels file to ship, for a model without edgeft metadata.")
@click.option("--json", "as_json", is_flag=True, help="Print bundle.json on stdout.")
def bundle(source: Path, target: str, out_dir: Path, artifact: str | None, from_bench: Path | None,
           labels: Path | None, as_json: bool) -> None:
    """Write APP_DIR: a model from SOURCE (EXPORT_DIR or a model file), the device layer, requirements, app.py."""
    from edgeft.bundle import build_bundle

    record = build_bundle(source, target, out_dir, artifact=artifact, from_bench=from_bench, labels=labels)
    if as_json:
        _emit_json(record)
    else:
        click.echo(f"bundle: {out_dir} ({record['artifact']} for {record['target']}); see {out_dir / 'README.md'}")


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI, turning edgeft errors into one line and an exit code."""
    from edgeft import interrupts
    from edgeft.outputs import write_failure

    interrupts.reset()
    interrupts.handle_sigterm()
    try:
        cli.main(args=argv, prog_name="edgeft", standalone_mode=False)
    except EdgeftError as error:
        click.echo(f"error: {error.message}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort as abort:  # click wraps KeyboardInterrupt (and so SIGTERM) in Abort
        click.echo(f"error: {interrupts.advice()}", err=True)
        cause = abort.__cause__
        sys.exit(interrupts.exit_code(cause) if isinstance(cause, KeyboardInterrupt) else 130)
    except KeyboardInterrupt as interrupt:
        click.echo(f"error: {interrupts.advice()}", err=True)
        sys.exit(interrupts.exit_code(interrupt))
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except OSError as error:
        failure = write_failure(error)
        if failure is None:
            raise
        click.echo(f"error: {failure.message}", err=True)
        sys.exit(failure.exit_code)


if __name__ == "__main__":
    main()
