"""``import-model`` and ``layers``: models trained elsewhere, and the layers of any model."""

from __future__ import annotations

from typing import Any

import click

from eviltwins import api
from eviltwins.cli.common import (
    PathType,
    arch_option,
    common_options,
    data_options,
    dataset_of_model_option,
    dataset_options,
    emit,
    model_folder_option,
    model_source,
    overwrite_option,
    trusted,
    weights_file_options,
)


@click.command("import-model")
@arch_option(
    "Architecture: a registered name ('eviltwins list models'), torchvision:NAME (any "
    "torchvision classification model) or package.module:Class (your own nn.Module; "
    "its module is imported).",
    required=True,
)
@click.option(
    "--weights",
    type=PathType,
    required=True,
    help="Weights file: .safetensors, or a .pt/.pth/.bin state dict (also inside "
    "{'state_dict': ...} / {'model': ...}; DataParallel's module. prefix is removed). Read "
    "only through safetensors or torch.load(weights_only=True).",
)
@click.option("--out", type=PathType, required=True, help="Model folder to write.")
@click.option(
    "--dataset",
    default=None,
    help="Dataset the model was trained for: gives the input shape and classes, is recorded "
    "for later commands, and the accuracy on 500 of its test images is reported.",
)
@weights_file_options
@data_options
@overwrite_option
@common_options
def import_model(**opts: Any) -> None:
    """Import a model trained elsewhere into a model folder (--out).

    Checks that the weights fit the architecture (--arch) and that the model runs on one input
    of its shape, then writes model.safetensors and model.json to --out.

    Give the input with --dataset or --input-shape C,H,W --num-classes N, and the
    normalisation the model was trained with as --mean/--std (images in [0, 1]; default:
    none). A package.module:Class architecture must be named again (--arch) whenever the folder
    is used: trust is never read from a file."""
    res = api.import_model(
        opts["arch"],
        opts["weights"],
        opts["out"],
        dataset=opts["dataset"],
        input_shape=opts["input_shape"],
        num_classes=opts["num_classes"],
        mean=opts["mean"],
        std=opts["std"],
        arch_kwargs=opts["arch_kwargs"],
        dataset_options=dataset_options(opts),
        device=opts["device"],
        data_root=opts["data_root"],
        download=opts["download"],
        overwrite=opts["overwrite"],
        quiet=opts["quiet"] or None,
    )
    layer = (
        f"{res.feature_layer} (picked by rule)" if res.feature_layer_picked else res.feature_layer
    )
    acc = (
        f"; accuracy {res.accuracy:.4f} on {res.n} test images" if res.accuracy is not None else ""
    )
    emit(
        res.to_dict(),
        opts["as_json"],
        f"imported {res.architecture} ({res.parameters:,} parameters, input "
        f"{tuple(res.input_shape)}, {res.num_classes} classes) to {res.out}; feature layer "
        f"{layer}{acc}",
    )


@click.command()
@model_folder_option("Model folder.")
@dataset_of_model_option
@data_options
@common_options
def layers(**opts: Any) -> None:
    """List the layers of a model that --layer can name, with their output shapes.

    These are the layers a forward pass goes through, by the names --layer takes (TrojanNN,
    TrojanNN*, ABS). The default layer is marked '*': the model's declared feature layer, else
    the last convolutional block's output (before global pooling / flatten)."""
    res = api.layers(
        model_source(opts),
        opts["dataset"],
        device=opts["device"],
        data_root=opts["data_root"],
        download=opts["download"],
        trust_arch=trusted(opts["trust_arch"], opts["trust_code"]),
        dataset_options=dataset_options(opts),
    )
    rows = []
    for info in res.layers:
        shape = "x".join(str(v) for v in info["output_shape"]) if info["output_shape"] else "-"
        mark = "*" if info["name"] == res.feature_layer else " "
        rows.append(
            f"{mark} {info['name']:<32} {info['type']:<20} {shape:<14} {info['parameters']:>10,}"
        )
    how = "picked by rule" if res.feature_layer_picked else "declared by the model"
    head = f"  {'layer':<32} {'type':<20} {'output':<14} {'parameters':>10}"
    foot = f"* default layer ({how})" if res.feature_layer else "no default layer: pass --layer"
    emit(res.to_dict(), opts["as_json"], "\n".join([head, *rows, foot]))


__all__ = ["import_model", "layers"]
