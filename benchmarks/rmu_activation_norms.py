"""Residual-stream norms at RMU's steered layer, set against its steering coefficient.

RMU (Li et al., "The WMDP Benchmark", ICML 2024) pulls the output of decoder block ``layer`` on forget text
towards ``c·u`` with ``u`` a random unit vector: ``c`` acts through its size relative to the activations there.
This script reports the per-token norm of that output on a model's forget rows (the prompt format the
benchmark trains with), so a reader can see whether the authors' ``c`` (6.5 for Zephyr-7B) is large or small
on another model, and what an adaptive coefficient ``β·‖h‖`` (Dang et al., AAAI 2025) would target.

    python benchmarks/rmu_activation_norms.py --model DIR --data DIR/data/forget10.jsonl --layer 7 \
        --prompt-format chat --rows 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.parameters import decoder_layers
from unlearnkit.runtime import set_threads

AUTHORS_COEFF = 6.5  # the Zephyr-7B recipe's c


def token_norms(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, rows: list[dict], layer: int
) -> torch.Tensor:
    """Norms (one per real token of every row, shape [total tokens]) of decoder block ``layer``'s output."""
    _, blocks = decoder_layers(model)
    captured: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: tuple, output: torch.Tensor | tuple) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output

    hook = blocks[layer].register_forward_hook(keep)
    norms = []
    try:
        with torch.no_grad():
            for row in rows:
                ids = encode_qa(tokenizer, fmt, row["question"], row["answer"], 512)["input_ids"]
                model(input_ids=torch.tensor([ids]))
                norms.append(captured["h"][0].norm(dim=-1))  # [tokens]
    finally:
        hook.remove()
    return torch.cat(norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A model folder or a pretrained model's name.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the model's).")
    parser.add_argument("--data", type=Path, required=True, help="JSONL with question/answer rows.")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--prompt-format", default="chat")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default=None, help="What the JSON calls the model (default: --model as given).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()][: args.rows]
    norms = token_norms(model, tokenizer, PromptFormat(args.prompt_format), rows, args.layer)
    hidden = model.config.hidden_size
    result = {
        "model": args.label or str(args.model), "layer": args.layer, "rows": len(rows), "tokens": int(norms.numel()), "hidden_size": hidden,
        "norm_median": float(norms.median()), "norm_mean": float(norms.mean()),
        "norm_min": float(norms.min()), "norm_max": float(norms.max()),
        "authors_coeff": AUTHORS_COEFF, "authors_coeff_over_median_norm": AUTHORS_COEFF / float(norms.median()),
        "machine": f"{platform.machine()}, {args.threads} torch thread(s)",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
