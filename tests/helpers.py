"""Helpers shared by several test modules (not a test module: pytest collects nothing here).

Test modules import helpers from here, never from one another, so that running
or moving one test file does not depend on another's contents.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from unlearnkit.builtin import PRESETS
from unlearnkit.cli import main
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.methods import METHODS
from unlearnkit.settings import build_config

# --------------------------------------------------------------------------------------------- command line


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "--quiet", *args])
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def micro(cache: Path) -> list[str]:
    return ["--preset", "micro", "--cache", str(cache)]


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- bench

# Two steps per run (micro forget10: 8 questions, batch 8) with no warm-up, so that the model does change.
BENCH_ARGS = ["--methods", "ga,npo", "--splits", "forget10", "--set", "num_epochs=2", "--set", "warmup_ratio=0"]
_SESSION: dict[str, Path] = {}


def bench_folder(cache: Path, root: Path) -> Path:
    """Run the two-method micro bench once per test session (the report tests read the same folder)."""
    if "bench" not in _SESSION:
        output = root / "bench"
        with pytest.MonkeyPatch.context() as patch:
            assert run_cli(["bench", *BENCH_ARGS, "--output", str(output), *micro(cache)], patch) == 0
        _SESSION["bench"] = output
    return _SESSION["bench"]


# --------------------------------------------------------------------------------------------- method matrix

FMT = PromptFormat("plain")


MATRIX_SETTINGS = {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "warmup_ratio": 0.0}


def matrix_config(method: str, **extra: object):
    """The matrix's short run, with the micro preset's per-method settings (e.g. RMU's layer) on top."""
    per_method = dict(dict(PRESETS["micro"].method_overrides).get(method, ()))
    return build_config(METHODS.get(method).config, {**MATRIX_SETTINGS, **per_method, **extra})


def blank_llama(tokenizer, num_layers: int):
    """A hidden-16 Llama to plant a fact in: every matrix small noise (so no layer produces an answer by itself),
    token embeddings noise except residual dimension 2, which is 1 on every token (a constant input for planted neurons)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=num_layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.02)
        embedding = model.model.embed_tokens.weight
        embedding.normal_(0, 0.3)
        embedding[:, :3] = torch.tensor([0.0, 0.0, 1.0])
    return model


def load_benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/NAME.py`` (not a package) as a module, for testing its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
