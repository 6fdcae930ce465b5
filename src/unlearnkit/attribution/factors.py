"""The factor cache: fitted curvature saved once, reused by later queries on the same model.

A factors folder holds two files (safetensors only, never pickle):

* ``factors.safetensors``: the tensors of every layer, keyed ``LAYER/ROLE`` (e.g.
  ``model.layers.0.mlp.down_proj/eigenvalues``; the roles of :class:`unlearnkit.attribution.scores.Factors`);
* ``factors.json``: the manifest: the estimator, the settings that shaped the fit, the model it was fitted on
  (the SHA-256 of its weight files where it is a local folder, and a digest of its parameter names and shapes),
  the training rows' digest and counts, each layer's shape and resolved damping.

Reusing factors (``--factors DIR``) on another model is refused; on other training rows it is allowed (the curvature
is an estimate of the model's, whatever rows estimate it) and recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearnkit.attribution.scores import Factors, InfluenceConfig, layer_damping
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_json

MANIFEST = "factors.json"
TENSORS = "factors.safetensors"
FORMAT = "unlearnkit-influence-factors/1"
# The settings that change the fitted tensors (the others change only how they are used).
FITTING_SETTINGS = ("empirical_fisher", "fisher_samples", "modules", "layers", "max_length", "seed")


def model_signature(model: nn.Module, source: str | Path | None) -> dict[str, Any]:
    """What factors must match: the weights' digest (None for a hub name) and a digest of parameter names and shapes."""
    from unlearnkit.provenance import weights_sha256

    shapes = {name: list(parameter.shape) for name, parameter in model.named_parameters()}
    return {
        "weights_sha256": weights_sha256(source) if source is not None else None,
        "shapes_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest(),
        "model_type": getattr(getattr(model, "config", None), "model_type", type(model).__name__),
    }


def fitting_settings(config: InfluenceConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in FITTING_SETTINGS}


def save_factors(factors: Factors, folder: Path, *, config: InfluenceConfig, signature: Mapping[str, Any], rows_sha256: str,
                 layer_shapes: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """Write ``factors.safetensors`` and ``factors.json`` into ``folder`` (inside a staging folder the caller publishes)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    flat = {f"{layer}/{role}": tensor.detach().to("cpu", torch.float32).contiguous().clone()
            for layer, roles in factors.tensors.items() for role, tensor in roles.items()}
    if flat:
        save_file(flat, str(folder / TENSORS))
    manifest = {
        "format": FORMAT,
        "estimator": factors.estimator,
        "settings": fitting_settings(config),
        "model": dict(signature),
        "train_rows_sha256": rows_sha256,
        "rows": factors.rows,
        "tokens": factors.tokens,
        "layers": {name: {"shape": list(shape), "damping": factors.damping.get(name)} for name, shape in layer_shapes.items()},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def factors_folder(path: Path | str) -> Path:
    """The folder holding the manifest: ``path`` itself, or a results folder's ``factors/``."""
    path = Path(path).expanduser()
    for candidate in (path, path / "factors"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise UnlearnkitError(f"--factors {path}: no {MANIFEST} there or in its factors/ folder. Pass the results folder of an earlier "
                          "`unlearnkit influence` run (or its factors/ folder), or leave --factors out to fit them.")


def read_manifest(path: Path | str) -> dict[str, Any]:
    folder = factors_folder(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"--factors {path}: {MANIFEST} is not readable JSON ({error}); fit the factors again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UnlearnkitError(f"--factors {path}: {MANIFEST} is not an unlearnkit influence manifest ({FORMAT}); fit the factors again.")
    return manifest


def check_manifest(manifest: Mapping[str, Any], path: Path | str, *, estimator: str, config: InfluenceConfig,
                   signature: Mapping[str, Any] | None = None, layer_shapes: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Refuse factors fitted for another estimator, with other fitting settings, or on another model (when ``signature`` is given)."""
    if manifest.get("estimator") != estimator:
        raise UnlearnkitError(f"--factors {path} were fitted for --estimator {manifest.get('estimator')}, not {estimator}; pass "
                              f"--estimator {manifest.get('estimator')}, or leave --factors out to fit {estimator}'s.")
    different = {name: (manifest.get("settings", {}).get(name), value) for name, value in fitting_settings(config).items()
                 if manifest.get("settings", {}).get(name) != value}
    if different:
        shown = ", ".join(f"{name} {old!r} there vs {new!r} here" for name, (old, new) in different.items())
        raise UnlearnkitError(f"--factors {path} were fitted with other settings ({shown}); use theirs, or leave --factors out.")
    if signature is None:
        return
    fitted = manifest.get("model", {})
    weights_differ = fitted.get("weights_sha256") and signature.get("weights_sha256") \
        and fitted["weights_sha256"] != signature["weights_sha256"]
    shapes = {name: list(shape) for name, shape in (layer_shapes or {}).items()}
    stored = {name: entry.get("shape") for name, entry in manifest.get("layers", {}).items()}
    if weights_differ or fitted.get("shapes_sha256") != signature.get("shapes_sha256") or (layer_shapes is not None and shapes != stored):
        raise UnlearnkitError(
            f"--factors {path} were fitted on another model (weights or parameter shapes differ from this model's); factors "
            "only hold for the model they were fitted on. Leave --factors out to fit them on this model.")


def load_factors(path: Path | str, config: InfluenceConfig) -> Factors:
    """The factors of a folder checked by :func:`check_manifest`, with each layer's damping resolved for ``config``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = factors_folder(path)
    manifest = read_manifest(folder)
    tensors: dict[str, dict[str, torch.Tensor]] = {name: {} for name in manifest.get("layers", {})}
    if manifest["estimator"] != "tracin":
        try:
            flat = load_file(str(folder / TENSORS))
        except (OSError, SafetensorError) as error:
            raise UnlearnkitError(f"--factors {path}: {TENSORS} is missing or damaged ({error}); fit the factors again.") from None
        for key, tensor in flat.items():
            layer, _, role = key.rpartition("/")
            if layer not in tensors:
                raise UnlearnkitError(f"--factors {path}: {TENSORS} holds {key!r}, a layer its manifest does not list; "
                                      "fit the factors again.")
            tensors[layer][role] = tensor
    required = {"ekfac": ("q_activation", "q_gradient", "eigenvalues"), "kfac": ("q_activation", "q_gradient", "eigenvalues"),
                "diagonal": ("diagonal",)}.get(manifest["estimator"], ())
    missing = [f"{layer}/{role}" for layer, roles in tensors.items() for role in required if role not in roles]
    if missing:
        raise UnlearnkitError(f"--factors {path}: {TENSORS} lacks {', '.join(missing[:3])}; fit the factors again.")
    factors = Factors(manifest["estimator"], tensors if manifest["estimator"] != "tracin" else {}, {}, int(manifest.get("rows", 0)),
                      int(manifest.get("tokens", 0)))
    factors.damping = layer_damping(factors.estimator, factors.tensors, config.damping)
    return factors
