"""The ``eviltwins`` command line: a thin layer over the public Python API (click).

Results go to stdout (``--json`` for machine-readable output); progress bars and logs go to
stderr. A user mistake prints one line ``eviltwins: error: <message>`` and exits with code 2;
bugs keep their tracebacks.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from eviltwins import api
from eviltwins.attacks import ATTACKS
from eviltwins.config import read_yaml
from eviltwins.data import DATASETS
from eviltwins.detectors import DETECTORS
from eviltwins.errors import EviltwinsError, ParamError
from eviltwins.models import MODELS
from eviltwins.version import __version__

PathType = click.Path(path_type=Path)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--device, --data-root, --download, --quiet, --json (shared by the commands)."""
    opts = [
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="auto (CUDA when present), cpu or cuda[:N].",
        ),
        click.option(
            "--data-root",
            type=PathType,
            default=None,
            help="Folder holding the datasets [default: $EVILTWINS_DATA, else "
            "~/.cache/eviltwins/data].",
        ),
        click.option("--download", is_flag=True, help="Fetch the dataset if it is missing."),
        click.option("--quiet", "-q", is_flag=True, help="Hide progress bars."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _emit(result: dict[str, Any], as_json: bool, summary: str) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else summary)


def _number_or_text(value: str | None) -> float | str | None:
    """A flag that is a number for some estimators and a name for others (``--threshold``)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


#: Command-line options a YAML config may not set (they say how to read the config itself).
_NOT_IN_CONFIG = frozenset({"config", "as_json", "json"})


def _resolve(config: Path | None, flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command's options and the estimator's parameters, from the command line and a YAML
    ``config`` (a flag given on the command line wins over the config).

    Returns ``(options, params)``: ``options`` maps every command option (``out``, ``device``,
    ``quiet``, ...) to its value, a config value cast like the flag would be; ``params`` holds
    the estimator's parameters: the ``flags`` the user set, and the config's other keys as
    written (the estimator checks their names, types and ranges).
    """
    from click.core import ParameterSource

    ctx = click.get_current_context()
    values = read_yaml(config) if config is not None else {}
    options = {k: v for k, v in ctx.params.items() if k not in flags}
    params = {k: v for k, v in flags.items() if v is not None}
    by_name = {p.name: p for p in ctx.command.params}
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for key, value in values.items():
        if key in _NOT_IN_CONFIG:
            raise ParamError(f"option {key!r} cannot be set in config {config}")
        param = by_name.get(key)
        if param is None or key in flags:
            params.setdefault(key, value)  # estimator parameter (flag wins when given)
            continue
        if ctx.get_parameter_source(key) in given:
            continue
        if value is None:
            options[key] = None
            continue
        try:
            cast = param.type_cast_value(ctx, value)
        except click.BadParameter as err:
            raise ParamError(
                f"option {key!r} in config {config}: {' '.join(err.message.split())}"
            ) from None
        except (TypeError, ValueError):
            raise ParamError(
                f"option {key!r} in config {config} must be {param.type.name}; got {value!r}"
            ) from None
        if param.callback is not None:
            cast = param.callback(ctx, param, cast)
        options[key] = cast
    return options, params


def _overwrite(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--overwrite (commands that write a folder)."""
    return click.option(
        "--overwrite",
        is_flag=True,
        help="Write into an --out folder holding another kind of eviltwins output (a model, "
        "an attack, a report) after deleting those files; never the input model's folder, "
        "never files eviltwins did not write.",
    )(fn)


def _trust(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--trust-arch / --trust-code (commands that load a received model folder)."""
    fn = click.option(
        "--trust-code",
        is_flag=True,
        help="Import whatever user architecture the model card names (runs that code: only "
        "for models from a source you trust).",
    )(fn)
    return click.option(
        "--trust-arch",
        "trust_arch",
        multiple=True,
        metavar="PKG.MOD:CLASS",
        help="A user architecture the model card may name; its module is imported (its code "
        "runs). Repeatable. Without it a card naming package.module:Class is refused and "
        "nothing is imported.",
    )(fn)


def _trusted(trust_arch: tuple[str, ...], trust_code: bool) -> bool | tuple[str, ...]:
    return True if trust_code else tuple(trust_arch)


def _loading(opts: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that ``api.attack`` and ``api.detect`` share: where results go,
    which user architectures the received card may import, the device, data and test subset."""
    return {
        "out": opts["out"],
        "overwrite": opts["overwrite"],
        "trust_arch": _trusted(opts["trust_arch"], opts["trust_code"]),
        "device": opts["device"],
        "data_root": opts["data_root"],
        "download": opts["download"],
        "test_limit": opts["test_limit"],
        "quiet": opts["quiet"] or None,
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
@click.version_option(__version__, prog_name="eviltwins")
def cli() -> None:
    """eviltwins: backdoor attacks (BadNet, TrojanNN, TrojanNN*) and detectors (NeuralCleanse,
    STRIP, ABS) for image classifiers, after Pang et al., CCS 2020."""


@cli.command()
@click.option(
    "--dataset", default=None, help=f"One of: {', '.join(DATASETS.names())}. [default: digits]"
)
@click.option(
    "--model",
    default=None,
    help="Architecture ('eviltwins list models') or package.module:Class. [default: cnn]",
)
@click.option("--epochs", type=int, default=None, help="Epochs [default: the dataset's].")
@click.option("--batch-size", type=int, default=None, help="Batch size. [default: 128]")
@click.option("--lr", type=float, default=None, help="Learning rate. [default: 0.05]")
@click.option("--optimizer", default=None, help="sgd or adam. [default: sgd]")
@click.option(
    "--augment/--no-augment", default=None, help="Training augmentation [default: the dataset's]."
)
@click.option("--seed", type=int, default=None, help="Random seed. [default: 0]")
@click.option("--train-limit", type=int, default=None, help="Train on a random subset of N.")
@click.option("--test-limit", type=int, default=None, help="Test on a random subset of N.")
@click.option(
    "--config",
    type=PathType,
    default=None,
    help="YAML file with any of these options (flags override it).",
)
@click.option(
    "--out", type=PathType, default=Path("runs/clean"), show_default=True, help="Output folder."
)
@_overwrite
@_common
def train(
    out: Path,
    overwrite: bool,
    config: Path | None,
    device: str,
    data_root: Path | None,
    download: bool,
    quiet: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Train a clean model; write model.safetensors and model.json to OUT.

    A config may set any of these options (command-line flags override it) and the other
    arguments of eviltwins.train (weight_decay, arch_kwargs)."""
    opts, params = _resolve(config, flags)
    known = set(inspect.signature(api.train).parameters) - set(opts)
    unknown = sorted(set(params) - known - set(flags))
    if unknown:
        raise ParamError(
            f"unknown option {unknown[0]!r} in config {config}; known: "
            f"{', '.join(sorted(known | set(opts) - _NOT_IN_CONFIG))}"
        )
    res = api.train(
        **params,
        out=opts["out"],
        overwrite=opts["overwrite"],
        device=opts["device"],
        data_root=opts["data_root"],
        download=opts["download"],
        quiet=opts["quiet"] or None,
    )
    m = res.metrics
    _emit(
        res.to_dict(),
        as_json,
        f"{res.card.architecture} on {res.card.dataset}: test accuracy {m['test_acc']:.4f} "
        f"after {len(res.history)} epochs ({res.seconds:.1f} s); saved to {res.out}",
    )


@cli.command()
@click.option(
    "--model",
    "model",
    type=PathType,
    required=True,
    help="Model folder written by 'eviltwins train'.",
)
@click.option("--dataset", default=None, help="Dataset [default: the model's own].")
@click.option("--test-limit", type=int, default=None, help="Test on a random subset of N.")
@_trust
@_common
def evaluate(
    model: Path,
    dataset: str | None,
    test_limit: int | None,
    trust_arch: tuple[str, ...],
    trust_code: bool,
    device: str,
    data_root: Path | None,
    download: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Clean test accuracy of a saved model."""
    res = api.evaluate(
        model,
        dataset,
        device=device,
        data_root=data_root,
        download=download,
        test_limit=test_limit,
        trust_arch=_trusted(trust_arch, trust_code),
    )
    _emit(
        res,
        as_json,
        f"{res['model']} on {res['dataset']}: accuracy {res['accuracy']:.4f} "
        f"over {res['n']} test images",
    )


@cli.command(context_settings={"show_default": False})
@click.argument("attack_name", metavar="ATTACK")
@click.option(
    "--model",
    "model",
    type=PathType,
    required=True,
    help="Benign model folder written by 'eviltwins train'.",
)
@click.option("--dataset", default=None, help="Dataset [default: the model's own].")
@click.option("--target", type=int, default=None, help="Target class. [default: 0]")
@click.option(
    "--size",
    type=float,
    default=None,
    help="Trigger width / image width, in (0, 1]. [badnet 0.15, trojannn/imc 0.3]",
)
@click.option(
    "--transparency",
    type=float,
    default=None,
    help="Trigger transparency in [0, 1); 0 is opaque. [default: 0.0]",
)
@click.option(
    "--position",
    default=None,
    help="bottom-right (default), bottom-left, top-right, top-left, center or 'row,col'.",
)
@click.option(
    "--pattern", default=None, help="badnet: white (default), black, random or an image file."
)
@click.option(
    "--epochs", type=int, default=None, help="badnet/trojannn: re-training epochs. [default: 2]"
)
@click.option(
    "--max-steps",
    type=int,
    default=None,
    help="Cap on re-training steps (equal budgets for fair comparisons).",
)
@click.option("--lr", type=float, default=None, help="Re-training learning rate. [0.01]")
@click.option("--batch-size", type=int, default=None, help="Batch size. [default: 128]")
@click.option(
    "--poison-rate",
    type=float,
    default=None,
    help="badnet: share of each batch poisoned. [default: 0.1]",
)
@click.option(
    "--from-scratch",
    is_flag=True,
    default=None,
    help="badnet: re-initialise the model before poisoned training.",
)
@click.option(
    "--poison-share",
    type=float,
    default=None,
    help="trojannn/imc: share of batches carrying stamped copies. [default: 0.1]",
)
@click.option(
    "--layer",
    default=None,
    help="trojannn/imc: internal layer for neuron selection [default: the model's feature layer].",
)
@click.option("--neurons", type=int, default=None, help="trojannn/imc: neurons to select. [2]")
@click.option(
    "--selection", default=None, help="trojannn/imc: least-activated (default) or most-connected."
)
@click.option(
    "--trigger-steps",
    type=int,
    default=None,
    help="trojannn: trigger-generation sign steps [20]; imc: Adam steps on the trigger "
    "per outer iteration [20].",
)
@click.option(
    "--trigger-lr",
    type=float,
    default=None,
    help="trojannn: sign-step size [0.015]; imc: Adam learning rate [0.01].",
)
@click.option(
    "--init",
    default=None,
    help="imc: the attack it starts from, trojannn (TrojanNN*, default) or badnet.",
)
@click.option(
    "--mode",
    default=None,
    help="imc: fixed (pattern only, default), opacity (one shared opacity) or size "
    "(per-pixel opacity: the square may shrink).",
)
@click.option(
    "--evade", default=None, help="imc: comma-separated evasion terms: neural-cleanse, strip, abs."
)
@click.option(
    "--outer-iters",
    type=int,
    default=None,
    help="imc: maximum outer iterations of Algorithm 2. [default: 40]",
)
@click.option(
    "--retrain-steps",
    type=int,
    default=None,
    help="imc: re-training steps per outer iteration [default: one epoch].",
)
@click.option(
    "--kappa", type=float, default=None, help="imc: stop once efficacy >= kappa. [default: 0.95]"
)
@click.option(
    "--max-acc-drop",
    type=float,
    default=None,
    help="imc: ... and the clean-accuracy drop <= this. [default: 0.015]",
)
@click.option("--early-stop/--no-early-stop", default=None, help="imc: stop at kappa.")
@click.option(
    "--fidelity-weight",
    type=float,
    default=None,
    help="imc: lambda, weight of ||m||_1 / trigger pixels [1 with neural-cleanse].",
)
@click.option(
    "--strip-weight",
    type=float,
    default=None,
    help="imc: nu, weight of the STRIP entropy term. [default: 0.6]",
)
@click.option("--seed", type=int, default=None, help="Random seed. [default: 0]")
@click.option("--train-limit", type=int, default=None, help="Use a random training subset.")
@click.option("--test-limit", type=int, default=None, help="Use a random test subset.")
@click.option(
    "--config",
    type=PathType,
    default=None,
    help="YAML file with attack parameters (flags override it).",
)
@click.option("--out", type=PathType, required=True, help="Output folder.")
@_overwrite
@_trust
@_common
def attack(
    attack_name: str,
    model: Path,
    dataset: str | None,
    train_limit: int | None,
    test_limit: int | None,
    config: Path | None,
    out: Path,
    overwrite: bool,
    trust_arch: tuple[str, ...],
    trust_code: bool,
    device: str,
    data_root: Path | None,
    download: bool,
    quiet: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Plant a backdoor with ATTACK (badnet, trojannn, imc) in a copy of MODEL; write the
    poisoned model, trigger.safetensors/.png, metrics.json and examples.png to OUT.

    imc with --init trojannn (the default) is TrojanNN*; with --init badnet it is BadNet*.
    A config may hold any attack parameter and any of these options (flags override it)."""
    opts, params = _resolve(config, flags)
    res = api.attack(
        attack_name,
        opts["model"],
        opts["dataset"],
        params=params,
        train_limit=opts["train_limit"],
        **_loading(opts),
    )
    m = res.metrics
    _emit(
        res.to_dict(),
        as_json,
        f"{res.attack}: ASR {m['asr']:.4f}, efficacy {m['efficacy']:.4f}, clean accuracy "
        f"{m['clean_acc']:.4f} (drop {100 * m['acc_drop']:.2f} points), mask L1 "
        f"{m['mask_l1']:.1f}; saved to {out}",
    )


@cli.command()
@click.argument("detector_name", metavar="DETECTOR")
@click.option("--model", "model", type=PathType, required=True, help="Model folder to scan.")
@click.option("--dataset", default=None, help="Dataset [default: the model's own].")
@click.option(
    "--trigger",
    type=PathType,
    default=None,
    help="strip/ensemble: trigger to stamp on the evaluation inputs [default: the "
    "model folder's trigger.safetensors].",
)
@click.option(
    "--target",
    type=int,
    default=None,
    help="strip/ensemble: the attack's target class [default: from model.json].",
)
@click.option(
    "--n-clean",
    type=int,
    default=1000,
    show_default=True,
    help="strip/ensemble: held-out clean images to fit on (and as many to test).",
)
@click.option(
    "--protocol",
    type=click.Choice(["effective", "all-stamped"]),
    default="effective",
    show_default=True,
    help="strip/ensemble: effective = clean inputs the model gets right vs stamped inputs it "
    "sends to the target (the authors'); all-stamped = every clean and stamped input. Both "
    "are reported.",
)
@click.option(
    "--preset",
    default=None,
    help="neural-cleanse: imc (1,600 inputs, 10 epochs, batch 32 = 500 steps per label; "
    "default) or original.",
)
@click.option(
    "--variant",
    default=None,
    help="strip: imc (N=8, average, ln, threshold at 5% FPR of held-out clean entropies; "
    "default) or original (N=100, additive, log2, normal fit at 1% FRR).",
)
@click.option(
    "--threshold",
    default=None,
    callback=lambda _c, _p, v: _number_or_text(v),
    help="strip/ensemble: threshold rule quantile, normal or fixed [the variant's]; "
    "neural-cleanse: anomaly index [2.0]; abs: REASR [0.8].",
)
@click.option(
    "--entropy-threshold",
    type=float,
    default=None,
    help="strip with --threshold fixed: the entropy below which an input is flagged [0.05].",
)
@click.option(
    "--frr",
    type=float,
    default=None,
    help="strip/ensemble: false-rejection (= false-positive) rate of the calibrated threshold "
    "[strip imc 0.05, quantile; strip original 0.01, normal fit; ensemble 0.05].",
)
@click.option("--epochs", type=int, default=None, help="neural-cleanse: epochs per label.")
@click.option("--n-inputs", type=int, default=None, help="neural-cleanse: inputs used.")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="neural-cleanse: optimisation steps per label [the preset's: 500]; abs: "
    "reverse-engineering steps [200]; ensemble: mixture weights [11].",
)
@click.option("--layer", default=None, help="abs: layer to stimulate [feature layer].")
@click.option("--seed", type=int, default=None, help="Random seed. [default: 0]")
@click.option("--test-limit", type=int, default=None, help="Use a random test subset.")
@click.option(
    "--config",
    type=PathType,
    default=None,
    help="YAML file with detector parameters (flags override it).",
)
@click.option(
    "--out", type=PathType, default=None, help="Folder for report.json (and reversed triggers)."
)
@_overwrite
@_trust
@_common
def detect(
    detector_name: str,
    model: Path,
    dataset: str | None,
    trigger: Path | None,
    target: int | None,
    n_clean: int,
    protocol: str,
    test_limit: int | None,
    config: Path | None,
    out: Path | None,
    overwrite: bool,
    trust_arch: tuple[str, ...],
    trust_code: bool,
    device: str,
    data_root: Path | None,
    download: bool,
    quiet: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Scan MODEL with DETECTOR: neural-cleanse or abs (model inspection), strip or ensemble
    (input filtering, evaluated on clean vs stamped held-out inputs). A config may hold any
    detector parameter and any of these options (flags override it)."""
    opts, params = _resolve(config, flags)
    report = api.detect(
        detector_name,
        opts["model"],
        opts["dataset"],
        params=params,
        trigger=opts["trigger"],
        target=opts["target"],
        n_clean=opts["n_clean"],
        protocol=opts["protocol"],
        **_loading(opts),
    )
    _emit(report.to_dict(), as_json, report.summary())


REGISTRIES = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "detectors": DETECTORS}


@cli.command("list")
@click.argument("kind")
@click.option("--json", "as_json", is_flag=True, help="Print the names as a JSON list.")
def list_(kind: str, as_json: bool) -> None:
    """List the registered names of KIND (datasets, models, attacks, detectors)."""
    if kind not in REGISTRIES:
        raise ParamError(f"cannot list {kind!r}; choose one of: {', '.join(REGISTRIES)}")
    names = REGISTRIES[kind].names()
    _emit({"kind": kind, "names": names}, as_json, "\n".join(names))


@cli.command()
@click.argument("config", type=PathType)
@click.option("--out", type=PathType, default=None, help="Run folder. [default: runs/<sweep name>]")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (--jobs processes); ray: a Ray cluster (pip install "
    "'eviltwins[ray]').",
)
@click.option(
    "--jobs", "-j", type=int, default=1, show_default=True, help="local: worker processes."
)
@click.option(
    "--ray-address",
    default=None,
    help="ray: address of an existing cluster [default: start a local one].",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Torch threads per cell [default: all cores / jobs; 1 on Ray]. Keep it fixed to "
    "reproduce numbers exactly.",
)
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report.")
@click.option("--check", is_flag=True, help="Only validate CONFIG and list its cells.")
@_common
def sweep(
    config: Path,
    out: Path | None,
    executor: str,
    jobs: int,
    ray_address: str | None,
    threads: int | None,
    report: bool,
    check: bool,
    device: str,
    data_root: Path | None,
    download: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Run (or resume) the sweep in CONFIG (YAML; see configs/): every cell's JSON result in
    OUT/cells, then the report in OUT/report. Finished cells are skipped; failed cells are
    retried; Ctrl-C keeps every finished cell. Exits with 2 when any cell failed."""
    from eviltwins.experiments import cells, load_spec
    from eviltwins.experiments.runner import check_run_folder
    from eviltwins.experiments.spec import user_models

    if jobs < 1:
        raise ParamError(f"--jobs must be >= 1 (worker processes); got {jobs}")
    if threads is not None and threads < 1:
        raise ParamError(f"--threads must be >= 1 (torch threads per cell); got {threads}")
    spec = load_spec(config)
    check_run_folder(out if out is not None else Path("runs") / spec.name)
    if download:
        for ds in spec.datasets:
            api.get_dataset(ds, data_root, download=True)
    if check:
        grid = cells(spec)
        keys = [c.key(spec) for c in grid]
        user = user_models(spec)
        text = f"{spec.name}: {len(keys)} cells, valid"
        for m in user:
            text += (
                f"\nnote: model {m!r} is user code: module {m.split(':')[0]!r} is imported when "
                "the sweep runs (not checked now)"
            )
        _emit({"name": spec.name, "cells": keys, "user_models": user}, as_json, text)
        return
    summary = api.sweep(
        spec,
        out,
        executor=executor,
        jobs=jobs,
        ray_address=ray_address,
        threads=threads,
        device=device,
        data_root=data_root,
        report=report,
        quiet=quiet or None,
    )
    text = summary.summary()
    if report and (summary.ran or summary.skipped):
        text += f"\nreport: {Path(summary.out) / 'report' / 'report.md'}"
    _emit(summary.to_dict(), as_json, text)
    summary.raise_for_failures()  # exit 2 with one line: never a success for a broken run


@cli.command("report")
@click.argument("run_dir", type=PathType)
@click.option("--out", type=PathType, default=None, help="Folder [default: RUN_DIR/report].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def report_(run_dir: Path, out: Path | None, as_json: bool) -> None:
    """Write the report of the sweep folder RUN_DIR: cells.csv, the paper's figures (PNG) and
    report.md / report.html with each claim of the paper next to the measured value."""
    rep = api.write_sweep_report(run_dir, out)
    for line in rep.unreadable_lines():
        click.echo(f"eviltwins: warning: {line}", err=True)
    _emit(rep.to_dict(), as_json, rep.summary())


@cli.command()
@click.option(
    "--out", type=PathType, default=Path("runs/demo"), show_default=True, help="Output folder."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", "-q", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the report summary as JSON.")
def demo(out: Path, seed: int, jobs: int, device: str, quiet: bool, as_json: bool) -> None:
    """The main job on the embedded digits dataset (no download, about 4 minutes on 2 CPU
    cores): train a clean small CNN; run TrojanNN and TrojanNN* at the same re-training budget
    at two trigger sizes; run NeuralCleanse and STRIP on every model; write the report
    (OUT/report/report.md, .html, figures). Re-running resumes. Exits with 2 when any cell
    failed (the report of the finished cells is still written)."""
    from eviltwins.experiments.demo import demo_spec

    if jobs < 1:
        raise ParamError(f"--jobs must be >= 1 (worker processes); got {jobs}")
    summary = api.sweep(
        demo_spec(seeds=[seed]), out, jobs=jobs, device=device, report=False, quiet=quiet or None
    )
    if not (summary.ran or summary.skipped):  # every cell failed: nothing to report
        _emit({"sweep": summary.to_dict(), "report": None}, as_json, summary.summary())
        summary.raise_for_failures()
    rep = api.write_sweep_report(summary.out)
    _emit(
        {"sweep": summary.to_dict(), "report": rep.to_dict()},
        as_json,
        f"{summary.summary()}\n{rep.summary()}\nopen {rep.out / 'report.html'}",
    )
    summary.raise_for_failures()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; returns the exit code (2 for user errors, with one stderr line)."""
    try:
        rv = cli.main(args=argv, prog_name="eviltwins", standalone_mode=False)
    except EviltwinsError as err:
        click.echo(f"eviltwins: error: {err}", err=True)
        return 2
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # click >= 8.2: bare group prints help
            click.echo(err.ctx.get_help() if err.ctx else str(err))
            return 0
        where = f" {err.ctx.command_path.split(' ', 1)[1]}" if err.ctx and err.ctx.parent else ""
        msg = " ".join(err.format_message().split())
        click.echo(f"eviltwins: error: {msg} (see 'eviltwins{where} --help')", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"eviltwins: error: {' '.join(err.format_message().split())}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("eviltwins: interrupted; finished outputs are kept", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point (``eviltwins``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
