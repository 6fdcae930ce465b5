"""Which weights a method may change: decoder layers found generically, module/layer selection, LoRA.

The vocabulary is peft's: ``target_modules`` names modules by their last name
components (``down_proj``, ``q_proj,v_proj``, ``mlp.down_proj``) and ``layers``
names decoder layers by index (``5,6,7`` or ``5-7``). The same selection
restricts full fine-tuning (only the selected modules' parameters train) or
places LoRA adapters, so a localization method can hand its choice to any
method in either form.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from unlearnkit.errors import UnlearnkitError, did_you_mean

LORA_DEFAULT_TARGETS = "all-linear"
"""peft's shorthand for every linear layer but the output head: where LoRA goes when no modules are named."""


@dataclass(frozen=True)
class Selection:
    """Parsed ``target_modules`` and ``layers``; ``None`` means no restriction."""

    target_modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None

    @property
    def restricts(self) -> bool:
        return self.target_modules is not None or self.layers is not None


def parse_modules(spec: str | None) -> tuple[str, ...] | None:
    """``"q_proj, v_proj"`` -> ``("q_proj", "v_proj")``; ``None``/empty -> no restriction."""
    if spec is None or not spec.strip():
        return None
    return tuple(part.strip() for part in spec.split(",") if part.strip())


def parse_layers(spec: str | int | None) -> tuple[int, ...] | None:
    """``"5,6,7"``, ``"5-7"`` or ``7`` -> sorted layer indices; ``None``/empty -> all layers."""
    if spec is None:
        return None
    if isinstance(spec, int):
        spec = str(spec)
    if not spec.strip():
        return None
    indices: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UnlearnkitError(f"layers must be indices like '5,6,7' or a range like '5-7'; got {spec!r}.")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise UnlearnkitError(f"layers range {part!r} runs backwards; write it as '{last}-{first}'.")
        indices.update(range(first, last + 1))
    return tuple(sorted(indices))


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks of a causal LM (Llama/Qwen ``model.layers``, GPT-2 ``transformer.h``, GPT-NeoX ``gpt_neox.layers``...).

    Found generically: the ``ModuleList`` whose length is the config's layer count
    (the longest ``ModuleList`` when the config does not say).
    """
    config = getattr(model, "config", None)
    depth = None
    for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
        depth = getattr(config, attribute, None) if config is not None else None
        if isinstance(depth, int):
            break
    candidates = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    if depth is not None:
        candidates = [(name, module) for name, module in candidates if len(module) == depth]
    if not candidates:
        raise UnlearnkitError(
            f"Could not find the decoder layers of {type(model).__name__}: no list of {depth or 'any number of'} blocks. "
            "Layer-based options (layers, RMU's layer) need a standard decoder-only transformer."
        )
    return max(candidates, key=lambda pair: len(pair[1]))


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last layer's output before the head (``model.norm``, ``transformer.ln_f``, ...).

    Found generically: a normalisation module (its class name says "Norm")
    beside the decoder layers, not an embedding norm; when there are several,
    the one registered after the layers.
    """
    name, blocks = decoder_layers(model)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    norms, after = [], []
    seen_layers = False
    for child_name, child in parent.named_children():
        if child is blocks:
            seen_layers = True
        elif "norm" in type(child).__name__.lower() and "emb" not in child_name.lower():
            norms.append(child)
            if seen_layers:
                after.append(child)
    if after:
        return after[-1]
    if len(norms) == 1:
        return norms[0]
    raise UnlearnkitError(
        f"Could not find the final norm of {type(model).__name__} beside its decoder layers ({name}); "
        "the logit lens and editing need a standard decoder-only transformer with a final norm before the head."
    )


def check_layers_exist(model: nn.Module, layers: Sequence[int], option: str = "layers") -> None:
    """Refuse a layer index past the model's depth, naming the option to change."""
    _, blocks = decoder_layers(model)
    missing = [index for index in layers if not 0 <= index < len(blocks)]
    if missing:
        raise UnlearnkitError(
            f"{option} asks for layer(s) {', '.join(map(str, missing))}, but the model has {len(blocks)} decoder "
            f"layer(s), numbered 0..{len(blocks) - 1}. Change --set {option}=..."
        )


def _module_matches(module_name: str, targets: Sequence[str]) -> bool:
    return any(module_name == target or module_name.endswith("." + target) for target in targets)


def _layer_of(module_name: str, layers_prefix: str) -> int | None:
    if not module_name.startswith(layers_prefix + "."):
        return None
    return int(module_name[len(layers_prefix) + 1:].split(".")[0])


def selected_parameter_names(model: nn.Module, selection: Selection) -> list[str]:
    """Names of the parameters a selection trains in full fine-tuning (all of them without a restriction).

    A parameter belongs to the module that owns it; it is selected when that
    module matches ``target_modules`` (when given) and lies in one of ``layers``
    (when given; parameters outside the decoder layers then stay frozen).
    """
    names = [name for name, _ in model.named_parameters()]
    if not selection.restricts:
        return names
    layers_prefix = None
    if selection.layers is not None:
        check_layers_exist(model, selection.layers)
        layers_prefix, _ = decoder_layers(model)
    chosen = []
    for name in names:
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        if selection.target_modules is not None and not _module_matches(module_name, selection.target_modules):
            continue
        if selection.layers is not None and _layer_of(module_name, layers_prefix) not in selection.layers:
            continue
        chosen.append(name)
    if not chosen:
        available = sorted({name.rsplit(".", 2)[-2] for name in names if name.count(".") >= 1})
        wanted = ", ".join(selection.target_modules or ())
        raise UnlearnkitError(
            f"target_modules={wanted!r} matches no parameter of the model"
            f"{' in layers ' + ','.join(map(str, selection.layers)) if selection.layers else ''}."
            f"{did_you_mean(wanted, available) if wanted else ''} Module names in this model: {', '.join(available)}."
        )
    return chosen


def restrict_trainable(model: nn.Module, names: Sequence[str]) -> None:
    """Freeze every parameter not in ``names`` (the optimiser only receives trainable parameters)."""
    keep = set(names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in keep)


def apply_lora(model: nn.Module, selection: Selection, rank: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on the selection; the base weights are frozen.

    Without ``target_modules`` the adapters go on every linear layer but the head
    (``all-linear``): unlearning needs more than the attention projections that
    peft's per-architecture default would pick.
    """
    from peft import LoraConfig, get_peft_model

    layers_pattern = None
    if selection.layers is not None:
        check_layers_exist(model, selection.layers)
        layers_prefix, _ = decoder_layers(model)
        layers_pattern = layers_prefix.rsplit(".", 1)[-1]
    targets = list(selection.target_modules) if selection.target_modules is not None else LORA_DEFAULT_TARGETS
    if selection.target_modules is not None:
        # Validate the names the same way as full fine-tuning, so a typo gets the same message.
        selected_parameter_names(model, Selection(selection.target_modules, None))
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        layers_to_transform=list(selection.layers) if selection.layers is not None else None,
        layers_pattern=layers_pattern,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with without_peft_deprecation_warning():
            return get_peft_model(model, lora)
    except ValueError as error:
        raise UnlearnkitError(f"Could not place LoRA adapters: {error} Change target_modules or layers.") from None


@contextlib.contextmanager
def without_peft_deprecation_warning() -> Iterator[None]:
    """Hide the one FutureWarning peft triggers whenever it wraps a model in LoRA adapters.

    peft reads transformers' deprecated ``is_gradient_checkpointing`` alias, so every LoRA run (and every
    adapter loaded) printed a deprecation notice, even with ``--quiet``, about code the user cannot change.
    Every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_lora_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@torch.no_grad()
def changed_parameter_names(model: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters whose values differ from the snapshot ``before`` (for tests and reports)."""
    return [name for name, parameter in model.named_parameters() if name in before and not torch.equal(parameter, before[name])]
