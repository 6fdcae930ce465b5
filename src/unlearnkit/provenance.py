"""What a results folder records so that a run can be reproduced and audited.

Library versions, and SHA-256 digests of the input data (the rows as canonical
JSON, whatever file format they came from) and of the model weights read and
written (the ``.safetensors`` files of a model folder, in name order), and a
fingerprint of a tokenizer's vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import accelerate
import datasets
import peft
import torch
import transformers

from unlearnkit import __version__


def environment() -> dict[str, str]:
    """Versions of Python, unlearnkit and the libraries that shape its numbers, and torch's CPU thread count (another
    count sums floats in another order: a training run's weights then differ in their last bits, and the difference grows)."""
    return {
        "torch_threads": str(torch.get_num_threads()),
        "unlearnkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
    }


def rows_sha256(rows: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of rows serialised as canonical JSON (sorted keys, no spaces), one per line."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def weights_sha256(model: str | Path) -> str | None:
    """SHA-256 over a local model folder's ``.safetensors`` files (name, then bytes, in name order).

    None for a hub name: the hub's revision is recorded by the caller instead.
    """
    folder = Path(model)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """A fingerprint of how ``tokenizer`` cuts text into ids: sha256 of its vocabulary (and BPE merges), as loaded.

    Two models compared by one experiment (target, retain oracle, unlearned model)
    must read the same ids as the same text; the same fingerprint says they do.
    Settings that do not change the ids of a text (padding side, chat template)
    stay out, so a tokenizer saved and loaded again keeps its fingerprint.
    """
    content: dict[str, Any] = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        merges = json.loads(backend.to_str()).get("model", {}).get("merges")
        if merges is not None:
            content["merges"] = merges
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()
