"""``finetune``: fine-tune a model (or a fresh tiny one) on QA data; how targets and retain oracles are made.

The target and the retain oracle of one experiment must share their tokenizer:
their truth ratios and membership scores are compared token by token. A fresh
tiny model therefore never gets a tokenizer trained on its own data (the target's
and the oracle's data differ) but always the one of :func:`unlearnkit.builtin.tiny_tokenizer`;
a model of one's own keeps its tokenizer. Every run records its tokenizer's
fingerprint (``config.json``, ``sha256.tokenizer``), which the oracle reference
written from the oracle also carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from unlearnkit import distributed
from unlearnkit.builtin import PROMPT_FORMAT, tiny_tokenizer
from unlearnkit.data.encoding import PromptFormat, check_fits_context
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import tokenizer_sha256
from unlearnkit.finetune import FinetuneConfig, finetune
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, save_model
from unlearnkit.provenance import environment, rows_sha256, weights_sha256
from unlearnkit.runs.folder import CHECKPOINTS, check_output_dir, results_folder, write
from unlearnkit.runs.inputs import DataChoice, RunOptions
from unlearnkit.runs.lock import locks_output

TINY = "tiny"


@dataclass(frozen=True)
class FinetuneInputs:
    """``model``: a folder or hub name, or ``tiny`` (a fresh tiny Llama of size ``tiny_config``, plain prompts).

    A fresh tiny model's tokenizer depends on ``tiny_config.vocab_size`` alone, never on ``data``.
    """

    model: str
    data: list[DataChoice] = field(repr=False)
    fmt: PromptFormat
    tiny_config: TinyModelConfig | None = None

    @property
    def rows(self) -> list[dict]:
        return [row for source in self.data for row in source.rows]


@locks_output
def run_finetune(*, inputs: FinetuneInputs, config: FinetuneConfig, options: RunOptions) -> dict[str, Any]:
    """Fine-tune on the union of ``inputs.data`` and write the model, its training log and summary."""
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    model, rows = inputs.model, inputs.rows
    check_output_dir(options.output, options.overwrite,
                     {"--model": model, **{f"--data {source.source}": source.source for source in inputs.data}})
    fmt = inputs.fmt
    if model == TINY and fmt not in (PromptFormat(), PROMPT_FORMAT):
        raise UnlearnkitError(f"A fresh tiny model is trained in {PROMPT_FORMAT.style} prompts (it has no chat template): drop "
                              "--prompt-format, --system-prompt and --date-string, or fine-tune a model of your own.")
    if model == TINY:
        tiny = inputs.tiny_config or TinyModelConfig()
        tokenizer = tiny_tokenizer(tiny.vocab_size)
        network = build_tiny_model(tiny, tokenizer, seed=config.seed)
        fmt = PROMPT_FORMAT  # a fresh tiny model is asked like the built-in ones: it has no chat template
    else:
        network = load_model(model, options.trust_remote_code)
        tokenizer = load_tokenizer(model, options.trust_remote_code)
    fmt.check(tokenizer)  # an impossible prompt format fails here, before any output exists
    check_fits_context(tokenizer, fmt, rows, getattr(network.config, "max_position_embeddings", None), "training data")
    run_config = {
        "command": "finetune", "model": model, "data": [source.source for source in inputs.data], "training": asdict(config),
        "tiny_model": asdict(inputs.tiny_config or TinyModelConfig()) if model == TINY else None, **fmt.record(),
        "environment": environment(),
        "sha256": {"training_rows": rows_sha256(rows), "source_model": weights_sha256(model), "tokenizer": tokenizer_sha256(tokenizer)},
    }
    with results_folder(options.output, options.overwrite, identity=run_config, resume=options.resume) as folder:
        write(folder / "config.json", run_config)
        stats = finetune(network, tokenizer, rows, config, fmt, options.show_progress,
                         checkpoint_dir=folder / CHECKPOINTS, checkpoint_every=options.checkpoint_every)
        write(folder / "training_log.json", stats.pop("log_history"))
        if distributed.is_main_process():
            save_model(network, tokenizer, folder / "model")
            run_config["sha256"]["output_model"] = weights_sha256(folder / "model")
        write(folder / "config.json", run_config)
        write(folder / "summary.json", {"examples": len(rows), **stats})
    return stats
