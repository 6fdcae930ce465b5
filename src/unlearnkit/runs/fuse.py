"""``fuse``: merge the unlearning layers of several EUL runs into one model, in closed form (Chen & Yang, EMNLP 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_json
from unlearnkit.methods.eul import (
    ARTIFACT_FILE,
    DEFAULT_RIDGE,
    GRAM_SUFFIX,
    WEIGHT_SUFFIX,
    fold_into_linear,
    fuse_unlearning_layers,
    read_unlearning_layers,
)
from unlearnkit.modeling import load_model, load_tokenizer, save_model
from unlearnkit.runs.folder import check_output_dir, results_folder
from unlearnkit.runs.lock import output_lock


def fuse_unlearning_files(
    base: str | Path,
    layer_files: Sequence[str | Path],
    output: Path,
    ridge: float = DEFAULT_RIDGE,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> list[str]:
    """Fuse the unlearning layers of several EUL runs into ``base`` and save the model to ``output``.

    Every run must have started from ``base`` and placed layers at the same
    modules. The output folder holds the fused model (a standard checkpoint) and
    its own ``unlearning_layers.safetensors`` (``M_m`` and ``Σ G_i``), so a fused
    model can be fused again with later runs. Returns the fused module names.
    """
    with output_lock(output):
        return _fuse_into(base, layer_files, output, ridge, overwrite, trust_remote_code)


def _fuse_into(
    base: str | Path, layer_files: Sequence[str | Path], output: Path, ridge: float, overwrite: bool, trust_remote_code: bool
) -> list[str]:
    check_output_dir(output, overwrite, {"--base": base, **{f"--layers {path}": path for path in layer_files}})
    if not layer_files:
        raise UnlearnkitError(f"Pass at least one --layers file (an EUL run's model/{ARTIFACT_FILE}).")
    runs = [read_unlearning_layers(path) for path in layer_files]
    widths = {str(path): next(iter(run.values()))[0].shape[0] for path, run in zip(layer_files, runs, strict=True)}
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"{path}: {width}" for path, width in widths.items())
        raise UnlearnkitError(f"These unlearning layers come from models of different hidden size ({listing}); "
                              "fuse runs of one base model only.")
    modules = sorted(runs[0])
    for path, run in zip(layer_files, runs, strict=True):
        if sorted(run) != modules:
            raise UnlearnkitError(
                f"{path} places unlearning layers at {', '.join(sorted(run))}, but {layer_files[0]} at {', '.join(modules)}; "
                "fuse runs trained with the same target_modules and layers."
            )
    model = load_model(base, trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code)
    fused: dict[str, Tensor] = {}
    for module in modules:
        try:
            linear = model.get_submodule(module)
        except AttributeError:
            raise UnlearnkitError(f"The base model {base} has no module {module}; "
                                  "were the unlearning layers trained on another model?") from None
        if not isinstance(linear, nn.Linear):
            raise UnlearnkitError(f"{module} of {base} is a {type(linear).__name__}, not a linear layer EUL can fold into.")
        width = next(iter(widths.values()))
        if linear.out_features != width:
            raise UnlearnkitError(
                f"The unlearning layers have hidden size {width}, but {module} of {base} has {linear.out_features} outputs; "
                "they come from a model of another hidden size."
            )
        layers = [run[module] for run in runs]
        weight = fuse_unlearning_layers(layers, ridge)
        fold_into_linear(linear, weight)
        fused[f"{module}.{WEIGHT_SUFFIX}"] = weight
        fused[f"{module}.{GRAM_SUFFIX}"] = sum(gram.float() for _, gram in layers)
    with results_folder(output, overwrite) as folder:
        save_model(model, tokenizer, folder, {ARTIFACT_FILE: fused})
        write_json(folder / "fusion.json", {"base": str(base), "layers": [str(path) for path in layer_files], "ridge": ridge,
                                            "modules": modules})
    return modules
