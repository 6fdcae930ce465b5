"""What every localizer shares: the registry, the located selection, and the localization folder.

A localizer answers "where in the network does this knowledge live?" for a set
of rows (question/answer pairs, optionally with a ``subject`` span). It is a
function ``localize(model, tokenizer, rows, fmt, config) -> Localization``
registered with :func:`register_localizer`; it never changes the model.

A :class:`Localization` holds named score arrays (e.g. causal tracing's
indirect effect per token and layer) and the :class:`LocatedSelection` they
imply: which decoder layers and modules may change and, optionally, which rows
or columns of which weight matrices (neurons). A weight-changing method given a
localization (``--localize DIR``) trains only that selection.

The folder format (written by :func:`save_localization`, read back by
:func:`load_localization`; never a pickle):

* ``localization.json``: localizer, settings, the selection, the model's
  signature (layer count and weight shapes) and free-form notes;
* ``scores.safetensors``: the score arrays by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_json
from unlearnkit.parameters import Selection, check_layers_exist, selected_parameter_names
from unlearnkit.registry import Registry

LOCALIZATION_FILE = "localization.json"
SCORES_FILE = "scores.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LocatedSelection:
    """Where a localizer says the knowledge lives, in the words of :mod:`unlearnkit.parameters`.

    ``layers`` and ``target_modules`` restrict whole modules as the methods'
    ``layers`` / ``target_modules`` options do (``None``: no restriction).
    ``rows`` / ``columns`` narrow further to single neurons: parameter name ->
    the indices along dimension 0 (rows: an output neuron of a linear layer) or
    dimension 1 (columns: e.g. ``mlp.down_proj`` columns are the FFN's
    intermediate neurons) that may change; ``weight_masks`` to single weights.
    With any of the three, only the parameters they name change; without them,
    whole parameters change (those the layer/module restriction selects).
    """

    layers: tuple[int, ...] | None = None
    target_modules: tuple[str, ...] | None = None
    rows: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    columns: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Parameters selected weight by weight: their boolean masks (same shape) are score arrays named ``mask/<name>``.
    weight_masks: tuple[str, ...] = ()

    @property
    def module_selection(self) -> Selection:
        return Selection(self.target_modules, self.layers)

    @property
    def has_neurons(self) -> bool:
        return bool(self.rows) or bool(self.columns) or bool(self.weight_masks)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers) if self.layers is not None else None,
            "target_modules": list(self.target_modules) if self.target_modules is not None else None,
            "rows": {name: list(indices) for name, indices in self.rows.items()},
            "columns": {name: list(indices) for name, indices in self.columns.items()},
            "weight_masks": list(self.weight_masks),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocatedSelection:
        try:
            layers = data.get("layers")
            modules = data.get("target_modules")
            return cls(
                layers=tuple(int(index) for index in layers) if layers is not None else None,
                target_modules=tuple(str(name) for name in modules) if modules is not None else None,
                rows={str(name): tuple(int(i) for i in indices) for name, indices in (data.get("rows") or {}).items()},
                columns={str(name): tuple(int(i) for i in indices) for name, indices in (data.get("columns") or {}).items()},
                weight_masks=tuple(str(name) for name in data.get("weight_masks") or ()),
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise UnlearnkitError(
                f"The selection in {LOCALIZATION_FILE} is malformed ({error}); run `unlearnkit localize` again."
            ) from None


@dataclass
class Localization:
    """A localizer's result: score arrays by name, the selection they imply, and what produced them."""

    localizer: str
    settings: dict[str, Any]
    scores: dict[str, torch.Tensor]
    selection: LocatedSelection
    model_signature: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalizerSpec:
    """A registered localizer: its function, typed config, paper and one-line summary."""

    name: str
    function: Callable[[PreTrainedModel, PreTrainedTokenizerBase, Sequence[dict], PromptFormat, Any], Localization]
    config: type
    citation: str
    summary: str


LOCALIZERS: Registry[LocalizerSpec] = Registry("localizer")


def register_localizer(name: str, *, config: type, citation: str, summary: str) -> Callable:
    """Function decorator: register ``localize(model, tokenizer, rows, fmt, config) -> Localization`` under ``name``."""

    def decorate(function: Callable) -> Callable:
        LOCALIZERS.register(name)(LocalizerSpec(name, function, config, citation, summary))
        return function

    return decorate


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What a localization must match in a model it is applied to: its architecture and every weight's shape."""
    shapes = {name: list(parameter.shape) for name, parameter in model.named_parameters()}
    digest = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "intermediate_size": getattr(config, "intermediate_size", None),
        "shapes_digest": digest,
    }


def check_fits(localization: Localization, model: nn.Module, source: str = "the localization") -> None:
    """Refuse a localization made on a model of another architecture, or one naming layers, weights or neurons it lacks."""
    expected = localization.model_signature
    actual = model_signature(model)
    different = [key for key in ("model_type", "num_layers", "hidden_size", "intermediate_size", "shapes_digest")
                 if expected.get(key) != actual.get(key)]
    if different:
        shown = ", ".join(f"{key} {expected.get(key)!r} vs {actual.get(key)!r}" for key in different if key != "shapes_digest")
        raise UnlearnkitError(
            f"{source} was made on another model ({shown or 'different weight shapes'}). "
            "Run `unlearnkit localize` on this model."
        )
    selection = localization.selection
    if selection.layers is not None:
        check_layers_exist(model, selection.layers, option="the localization's layers")
    parameters = dict(model.named_parameters())
    for kind, dim, located in (("rows", 0, selection.rows), ("columns", 1, selection.columns)):
        for name, indices in located.items():
            if name not in parameters:
                raise UnlearnkitError(f"{source} selects {kind} of {name!r}, which this model does not have.")
            shape = parameters[name].shape
            if len(shape) <= dim or any(not 0 <= index < shape[dim] for index in indices):
                raise UnlearnkitError(f"{source} selects {kind} of {name!r} outside its shape {tuple(shape)}.")
    for name in selection.weight_masks:
        if name not in parameters:
            raise UnlearnkitError(f"{source} selects weights of {name!r}, which this model does not have.")
        mask = localization.scores.get(f"mask/{name}")
        if mask is None or tuple(mask.shape) != tuple(parameters[name].shape):
            raise UnlearnkitError(f"{source} has no mask of {name!r} in the shape {tuple(parameters[name].shape)}; "
                                  "run `unlearnkit localize` again.")


def selected_parameters(model: nn.Module, selection: LocatedSelection) -> list[str]:
    """Names of the parameters a localized method trains: the module/layer restriction, narrowed to the neuron maps."""
    names = selected_parameter_names(model, selection.module_selection)
    if selection.has_neurons:
        located = set(selection.rows) | set(selection.columns) | set(selection.weight_masks)
        names = [name for name in names if name in located]
    return names


def neuron_masks(model: nn.Module, localization: Localization) -> dict[str, torch.Tensor]:
    """Per-parameter boolean masks (the weight's shape) of what may change; empty when whole parameters change.

    A parameter's mask is the union of its located rows, columns and single weights.
    """
    selection = localization.selection
    parameters = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for name in set(selection.rows) | set(selection.columns) | set(selection.weight_masks):
        weight = parameters[name]
        mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
        if name in selection.rows:
            mask[list(selection.rows[name])] = True
        if name in selection.columns:
            mask[:, list(selection.columns[name])] = True
        if name in selection.weight_masks:
            mask |= localization.scores[f"mask/{name}"].to(device=weight.device).bool()
        masks[name] = mask
    return masks


def save_localization(localization: Localization, folder: Path) -> None:
    """Write ``localization.json`` and ``scores.safetensors`` into ``folder`` (which the caller publishes atomically)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Cloned: safetensors refuses tensors that share storage (a score that is a view of another, e.g. a row of a map).
    save_file({name: tensor.detach().to("cpu", torch.float32).clone().contiguous() for name, tensor in localization.scores.items()},
              str(folder / SCORES_FILE))
    write_json(folder / LOCALIZATION_FILE, {
        "format_version": FORMAT_VERSION,
        "localizer": localization.localizer,
        "settings": localization.settings,
        "selection": localization.selection.to_json(),
        "model_signature": localization.model_signature,
        "scores": sorted(localization.scores),
        "notes": localization.notes,
    })


def load_localization(folder: Path | str) -> Localization:
    """Read a localization folder back; anything missing or malformed gets one message naming the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest_path = folder / LOCALIZATION_FILE
    if not manifest_path.is_file():
        raise UnlearnkitError(
            f"{folder} is not a localization folder: it has no {LOCALIZATION_FILE}. "
            "Create one with `unlearnkit localize MODEL --data SRC --localizer NAME --output DIR`."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnlearnkitError(f"{manifest_path} is not readable JSON ({error}); run `unlearnkit localize` again.") from None
    missing = [key for key in ("localizer", "selection", "model_signature") if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise UnlearnkitError(f"{manifest_path} lacks {', '.join(missing)}; run `unlearnkit localize` again.")
    listed = manifest.get("scores") or []
    scores: dict[str, torch.Tensor] = {}
    if (folder / SCORES_FILE).is_file():
        try:
            scores = load_file(str(folder / SCORES_FILE))
        except (SafetensorError, OSError) as error:
            raise UnlearnkitError(f"{folder / SCORES_FILE} is damaged ({error}); run `unlearnkit localize` again.") from None
    missing_scores = [name for name in listed if name not in scores]
    if missing_scores:
        raise UnlearnkitError(
            f"{folder} is incomplete: {SCORES_FILE} lacks {', '.join(missing_scores[:3])}"
            f"{' and others' if len(missing_scores) > 3 else ''} that {LOCALIZATION_FILE} lists; run `unlearnkit localize` again."
        )
    return Localization(
        localizer=str(manifest["localizer"]),
        settings=dict(manifest.get("settings") or {}),
        scores=scores,
        selection=LocatedSelection.from_json(manifest["selection"]),
        model_signature=dict(manifest["model_signature"]),
        notes=dict(manifest.get("notes") or {}),
    )


def config_settings(config: Any) -> dict[str, Any]:
    """A localizer config as the JSON settings recorded with its result."""
    return json.loads(json.dumps(asdict(config), default=str))
