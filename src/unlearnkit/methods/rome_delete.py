"""Deletion by model editing: one ROME rank-one edit of an MLP output projection per forget row.

Patil, Hase & Bansal, "Can Sensitive Information Be Deleted From LLMs? Objectives
for Defending Against Extraction Attacks", ICLR 2024, with the editor of Meng et
al., "Locating and Editing Factual Associations in GPT" (ROME), NeurIPS 2022.
The math is in :mod:`unlearnkit.editing`.

Each forget row is one edit, applied one after another (ROME's sequential
editing): the key is the MLP output projection's input at the last token of the
row's subject, the value is optimised for the chosen ``objective``, and the
closed-form update writes it into the weight. No optimiser loop runs:
:meth:`RomeDelete.train` makes the edits, logging one line per edit (``loss``: the
value optimisation's final loss; ``edit_objective_start``/``_end``; ``edit_weight_change``).

Objectives (``objective``)
--------------------------
* ``dummy``: the empty-response defence, an edit to ``dummy_answer`` ("I don't know");
* ``error_injection``: the paper's baseline, an edit to a wrong answer (the row's ``wrong_answer_field``;
  the built-in rows' ``perturbed_answer``);
* ``fact_erasure``: the paper's baseline, minimise the true answer's probability;
* ``max_entropy``: maximise the entropy of the logit-lens distributions at the answer position;
* ``head_projection`` (default): push the answer's logit-lens probability out of every layer's
  top-k and bottom-k (k = ``lens_k`` = 4), the candidate set of the head-projection attack.
  The default because it is the paper's defence against the attacks the audit runs.

The "answer position" of the lens objectives is the one the audit's logit-lens
attacks read: the prompt followed by the answer's tokens before its fact (the
row's ``value`` when the answer contains it, else the answer's first token), and
the answer token is the fact's first token.

Defaults (ROME's GPT-2 XL / GPT-J hparams, which Patil et al. keep)
------------------------------------------------------------------
``value_steps`` 20, ``value_learning_rate`` 0.5 (Adam), ``value_weight_decay`` 0.5 (on
``||delta|| / ||v_init||^2``), ``clamp_norm_factor`` 4, ``kl_factor`` 0.0625 on the essence
prompt "<subject> is a"; keys averaged over the bare prompt and 10 sampled prefixes of 5
tokens and 10 of 10 (``prefix_lengths`` "5,10", ``prefixes_per_length`` 10); the value is
optimised on the first 10 of these prompts (``value_prefixes``, Patil et al.'s code).
``layer``: None picks ``floor(depth * 7/32)``, Patil et al.'s layers for Llama-2-7b (7) and GPT-J (6).
The logit-lens objectives read ``lens_layers``: None takes every layer after the edited one (the
edited layer's and earlier layers' outputs at the answer position do not depend on the edit).
An edit of the last layer changes nothing at later positions (no attention layer reads it
afterwards): the run warns, and on a one-layer model (the micro benchmark) the edit is a no-op.

Deliberate differences
----------------------
* Statistics text (``stats_source``): ROME estimates C on 100,000 Wikipedia samples, which an offline run
  cannot read. The default, ``model_samples``, estimates it on ``stats_tokens`` (32,768) tokens the model
  itself samples at temperature 1 from ROME's own seed words (passages of ``stats_max_length`` tokens,
  seed ``stats_seed``; :func:`unlearnkit.editing.statistics.sample_passages`): the model's own text is the
  closest offline stand-in for its training distribution, and enough tokens make C invertible for MLP
  widths of a few thousand (SmolLM2-135M: 1,536, where the shipped general text's few hundred tokens leave
  C singular). Sampling costs minutes on a CPU once per model; the text and C are cached.
  ``general_text`` (the default when ``stats_text`` is given) reads a text file, by default the shipped
  general-English text. A singular C stops the run and asks for more text or ``stats_damping`` (a ridge
  ``damping * mean(diag C)``; ROME has none: default 0).
* ``lens_margin_offset`` (default 0, Patil et al.'s code): the Head-Projection hinge compares the answer's
  probability with the k-th largest (and k-th smallest) of each layer, so the loss is already zero when the
  answer sits at rank k, inside the attack's top-k: on SmolLM2-135M the optimisation reached a near-zero loss
  and the attack still found every edited fact (docs/editing_smollm2.md). ``lens_margin_offset=1`` compares
  with the (k+1)-th instead, so a zero loss leaves the answer outside the candidate set (there: the attack found
  2 of the 4 facts, against 3 after dummy edits).
* No early stop of the value optimisation (ROME stops a rewrite once its NLL < 0.05; Patil
  et al.'s deletion objectives never stop early): every edit runs ``value_steps`` steps.
* The update maps the bare prompt's key to v* exactly (ROME's code); the paper's equation
  uses the averaged key k* there.
* Prompts are the benchmark's question format (PromptFormat) and the sampled prefixes go
  after its BOS token, where ROME prefixes raw CounterFact sentences.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import TrainOutput

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.editing.rank_one import (
    LENS_OBJECTIVES,
    OBJECTIVES,
    EditRequest,
    EditSettings,
    apply_edit,
    average_key,
    context_prefixes,
    optimise_value,
)
from unlearnkit.editing.sites import default_edit_layer, first_token_of, last_token_of, output_projection
from unlearnkit.editing.statistics import SOURCES, general_text_passages, layer_second_moment, sampled_passages
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization.subjects import subject_of
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.parameters import Selection, check_layers_exist, decoder_layers, parse_layers
from unlearnkit.settings import check_choice, require_at_least, require_non_negative, require_positive

logger = logging.getLogger("unlearnkit")


@dataclass
class RomeDeleteConfig(MethodConfig):
    objective: str = field(
        default="head_projection",
        metadata={"help": f"What the edited value is optimised for: {', '.join(OBJECTIVES)} (see the module docs)."},
    )
    dummy_answer: str = field(default="I don't know", metadata={"help": "objective=dummy: the answer the edit puts in the fact's place."})
    wrong_answer_field: str = field(
        default="perturbed_answer",
        metadata={"help": "objective=error_injection: the row field holding a wrong answer (a text, or a list whose first is used)."},
    )
    layer: int | None = field(
        default=None,
        metadata={"help": "Decoder layer whose MLP output projection is edited. None: the localization's first layer when "
                          "localize is set, else floor(depth * 7/32) (Patil et al.: Llama-2-7b 7, GPT-J 6)."},
    )
    subject_field: str | None = field(
        default=None, metadata={"help": "Row field naming the subject (None: the first of subject, author, entity present)."}
    )
    value_steps: int = field(default=20, metadata={"help": "Adam steps of the value optimisation (ROME's v_num_grad_steps)."})
    value_learning_rate: float = field(default=0.5, metadata={"help": "Adam learning rate of the value optimisation (ROME's v_lr)."})
    value_weight_decay: float = field(
        default=0.5, metadata={"help": "Weight of ||delta|| / ||v_init||^2 in the value loss (ROME's v_weight_decay)."}
    )
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "||delta|| is kept within this times ||v_init|| (ROME)."})
    kl_factor: float = field(default=0.0625, metadata={"help": "Weight of the KL on the essence prompt '<subject> is a' (ROME)."})
    prefix_lengths: str = field(
        default="5,10", metadata={"help": "Token lengths of the sampled prefixes the key is averaged over (ROME: 5 and 10)."}
    )
    prefixes_per_length: int = field(
        default=10, metadata={"help": "Prefixes sampled per length (ROME: 10); 0: the bare prompt alone."}
    )
    value_prefixes: int = field(
        default=10, metadata={"help": "Prompts (bare first, then prefixed) the value is optimised on (Patil et al.'s code: 10)."}
    )
    lens_layers: str | None = field(
        default=None,
        metadata={"help": "head_projection/max_entropy: layers read through the logit lens ('3,4' or '3-5'). "
                          "None: the edited layer to the last."},
    )
    lens_k: int = field(default=4, metadata={"help": "head_projection: the top-k/bottom-k the answer is pushed out of (Patil et al.: 4)."})
    lens_margin_offset: int = field(
        default=0,
        metadata={"help": "head_projection: hinge against the (k + offset)-th largest/smallest probability. 0: Patil et al.'s "
                          "code, whose loss is already zero with the answer at rank k (inside the attack's top-k); 1: just outside."},
    )
    stats_source: str | None = field(
        default=None,
        metadata={"help": "Where the key statistics C come from: model_samples (text the model samples, temperature 1) or "
                          "general_text (stats_text, else the shipped general-English text). None: general_text when stats_text "
                          "is given, else model_samples."},
    )
    stats_text: str | None = field(
        default=None, metadata={"help": "Text file (paragraphs) for the key statistics C (stats_source=general_text)."}
    )
    stats_tokens: int = field(
        default=32768, metadata={"help": "stats_source=model_samples: tokens sampled for C (ROME: 100,000 Wikipedia samples)."}
    )
    stats_seed: int = field(default=0, metadata={"help": "stats_source=model_samples: the sampling seed (the text is cached per seed)."})
    stats_max_length: int = field(
        default=256, metadata={"help": "Tokens per passage read for the key statistics (and per sampled passage)."}
    )
    stats_damping: float = field(
        default=0.0, metadata={"help": "Ridge added to C as damping * mean(diag C) (ROME: 0; raise it when C is singular)."}
    )
    stats_cache: str | None = field(
        default=None, metadata={"help": "Cache folder of the key statistics (None: $UNLEARNKIT_CACHE or ~/.cache/unlearnkit)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("objective", self.objective, OBJECTIVES)
        require_at_least(1, value_steps=self.value_steps, value_prefixes=self.value_prefixes, lens_k=self.lens_k,
                         stats_tokens=self.stats_tokens)
        require_at_least(2, stats_max_length=self.stats_max_length)
        require_at_least(0, prefixes_per_length=self.prefixes_per_length, lens_margin_offset=self.lens_margin_offset)
        require_positive(value_learning_rate=self.value_learning_rate, clamp_norm_factor=self.clamp_norm_factor)
        require_non_negative(value_weight_decay=self.value_weight_decay, kl_factor=self.kl_factor, stats_damping=self.stats_damping)
        if self.layer is not None and self.layer < 0:
            raise UnlearnkitError(f"layer must be a decoder layer index >= 0, got {self.layer}.")
        if self.objective == "dummy" and not self.dummy_answer.strip():
            raise UnlearnkitError("dummy_answer is empty; give the answer the edit should produce (e.g. \"I don't know\").")
        self.lengths()
        parse_layers(self.lens_layers)
        if self.target_modules is not None or self.layers is not None:
            raise UnlearnkitError("rome_delete edits one MLP output projection: choose it with layer=N, not target_modules or layers.")
        if self.stats_source is not None:
            check_choice("stats_source", self.stats_source, SOURCES)
        if self.stats_source == "model_samples" and self.stats_text is not None:
            raise UnlearnkitError("stats_text is read only with stats_source=general_text; drop stats_text, or set "
                                  "stats_source=general_text to estimate C on it.")
        if self.stats_text is not None and not Path(self.stats_text).is_file():
            raise UnlearnkitError(f"stats_text {self.stats_text!r} is not a file; give a text file of plain-prose paragraphs.")

    def lengths(self) -> list[int]:
        """``prefix_lengths`` as positive ints."""
        try:
            values = [int(part) for part in self.prefix_lengths.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise UnlearnkitError(f"prefix_lengths must be comma-separated token counts >= 1 such as '5,10', got {self.prefix_lengths!r}.")
        return values

    def statistics_source(self) -> str:
        """``stats_source``, or its default: general_text when ``stats_text`` is given, else model_samples."""
        return self.stats_source or ("general_text" if self.stats_text is not None else "model_samples")

    def statistics_passages(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list:
        """The passages C is estimated on: sampled token ids (cached) or a text file's paragraphs."""
        if self.statistics_source() == "general_text":
            return general_text_passages(self.stats_text)
        cache = Path(self.stats_cache) if self.stats_cache else None
        sampled = sampled_passages(model, tokenizer, self.stats_tokens, self.sample_length(model), self.stats_seed, cache=cache)
        logger.info("rome_delete: statistics text of %d tokens sampled from the model%s", sampled.tokens,
                    " (cached)" if sampled.from_cache else "")
        return sampled.passages

    def sample_length(self, model: PreTrainedModel) -> int:
        """Tokens per sampled passage: ``stats_max_length``, within the model's positions."""
        positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        return min(self.stats_max_length, positions) if positions else self.stats_max_length

    def selection(self) -> Selection:
        return Selection()  # the edit writes one matrix itself; the Trainer's trainable selection is unused

    def edit_layer(self, model: PreTrainedModel) -> int:
        """The layer edited: ``layer``, else the localization's first layer when one is given, else the depth rule."""
        if self.layer is not None:
            return self.layer
        localize = getattr(self, "localize", None)  # MethodConfig's localization folder, where that option exists
        if localize:
            from unlearnkit.localization import load_localization

            layers = load_localization(localize).selection.layers
            if layers:
                return layers[0]
        return default_edit_layer(len(decoder_layers(model)[1]))

    def read_layers(self, model: PreTrainedModel) -> tuple[int, ...]:
        """The layers the lens objectives read."""
        depth = len(decoder_layers(model)[1])
        # A layer's output at the answer position does not depend on its own MLP at the subject's position: read the later ones.
        return parse_layers(self.lens_layers) or tuple(range(min(self.edit_layer(model) + 1, depth - 1), depth))

    def check_model(self, model: PreTrainedModel) -> None:
        layer = self.edit_layer(model)
        check_layers_exist(model, [layer], option="layer")
        output_projection(model, layer)
        if self.objective in LENS_OBJECTIVES:
            check_layers_exist(model, self.read_layers(model), option="lens_layers")
            if model.get_output_embeddings() is None:
                raise UnlearnkitError(f"objective={self.objective} reads the logit lens, and {type(model).__name__} has no output head.")

    def check_data(self, forget: Sequence[dict], retain: Sequence[dict]) -> None:
        for index, row in enumerate(forget, start=1):
            subject_of(row, self.subject_field, index)
            if self.objective == "error_injection":
                wrong_answer(row, self.wrong_answer_field, index)

    def check_encoded(self, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, forget: Sequence[dict]) -> None:
        for index, row in enumerate(forget, start=1):
            edit_request(tokenizer, fmt, row, self, index)


def wrong_answer(row: dict, field_name: str, index: int) -> str:
    """The row's wrong answer for error injection: a text, or the first text of a list."""
    value = row.get(field_name)
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise UnlearnkitError(
            f"forget row {index} has no wrong answer in {field_name!r} (objective=error_injection edits each fact to a wrong "
            "answer). Add the field, name another with wrong_answer_field, or choose another objective."
        )
    return value


def edit_request(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, row: dict, config: RomeDeleteConfig, index: int) -> EditRequest:
    """A forget row as one edit: its prompt and subject, the target the objective scores, the answer's fact token."""
    subject = subject_of(row, config.subject_field, index)
    question, answer = row["question"], row["answer"]
    prompt_ids, answer_ids = fmt.qa_ids(tokenizer, question, answer)
    last_token_of(tokenizer, prompt_ids, subject, f"forget row {index}")
    if config.objective == "dummy":
        target = fmt.answer_ids(tokenizer, config.dummy_answer, question)
    elif config.objective == "error_injection":
        target = fmt.answer_ids(tokenizer, wrong_answer(row, config.wrong_answer_field, index), question)
    else:
        target = answer_ids
    value = row.get("value")
    fact_at = first_token_of(tokenizer, answer_ids, value) if isinstance(value, str) and value.strip() else None
    fact_at = fact_at or 0
    if not answer_ids or not target:
        raise UnlearnkitError(f"forget row {index} has an empty answer once tokenised; rome_delete needs one.")
    return EditRequest(subject, tuple(prompt_ids), tuple(target), tuple(answer_ids[:fact_at]), answer_ids[fact_at])


@register_method(
    "rome_delete",
    config=RomeDeleteConfig,
    paper='Patil, Hase & Bansal, "Can Sensitive Information Be Deleted From LLMs? Objectives for Defending Against '
          'Extraction Attacks", ICLR 2024; editor: Meng et al., "Locating and Editing Factual Associations in GPT" (ROME), NeurIPS 2022',
    summary="One rank-one edit of an MLP output projection per forget row: W' = W + (v* - W k)(C^-1 k*)^T / ((C^-1 k*)^T k), "
            "v* optimised for a deletion objective (head projection, max entropy, dummy answer, error injection).",
    needs_retain=False,
    family="editing",
)
class RomeDelete(UnlearnTrainer):
    """ROME-style deletion (Patil et al., ICLR 2024): sequential rank-one edits, no optimiser loop."""

    supports_lora = False
    # No optimiser steps: each forget row is one closed-form edit (read by the run's warnings, which count steps).
    uses_optimizer: ClassVar[bool] = False
    # With localize set, the edited layer is the localization's first layer (RomeDeleteConfig.edit_layer), not a trained selection.
    reads_localization: ClassVar[bool] = True

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """Edit the model once per forget row, in order; a checkpoint to resume from is not used (edits take seconds)."""
        config: RomeDeleteConfig = self.method_config
        dataset = self.train_dataset
        tokenizer, fmt, rows = dataset.tokenizer, dataset.fmt, dataset.forget_rows
        model = self.model
        was_training = model.training
        model.eval()  # no dropout: ROME optimises and reads keys in eval mode
        model.requires_grad_(False)  # only the value shift is optimised
        try:
            losses = self._edit_all(model, tokenizer, fmt, rows, config)
        finally:
            model.train(was_training)
        return TrainOutput(self.state.global_step, sum(losses) / len(losses) if losses else math.nan, {})

    def _edit_all(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, rows: Sequence[dict],
                  config: RomeDeleteConfig) -> list[float]:
        layer = config.edit_layer(model)
        site = output_projection(model, layer)
        if layer == len(decoder_layers(model)[1]) - 1:
            logger.warning("rome_delete edits the last layer (%d): no later attention layer reads the subject's position, so the "
                           "answer cannot change and the edits do nothing. Set layer to an earlier one.", layer)
        requests = [edit_request(tokenizer, fmt, row, config, index) for index, row in enumerate(rows, start=1)]
        stats = layer_second_moment(model, tokenizer, site, config.statistics_passages(model, tokenizer), config.stats_max_length,
                                    cache=Path(config.stats_cache) if config.stats_cache else None)
        logger.info("rome_delete: editing %s (key statistics from %d tokens%s)", site.name, stats.tokens,
                    ", cached" if stats.from_cache else "")
        prefixes = context_prefixes(model, tokenizer, config.lengths(), config.prefixes_per_length, config.seed)
        settings = EditSettings(config.objective, config.value_steps, config.value_learning_rate, config.value_weight_decay,
                                config.clamp_norm_factor, config.kl_factor, config.read_layers(model), config.lens_k,
                                config.lens_margin_offset)
        losses = []
        for number, request in enumerate(requests, start=1):
            average, bare = average_key(model, tokenizer, site, request, prefixes)
            with torch.enable_grad():
                value, objective_trace, loss_trace = optimise_value(model, tokenizer, site, request, prefixes[:config.value_prefixes],
                                                                    settings)
            change = apply_edit(site, value, average, bare, stats.matrix, config.stats_damping)
            self.state.global_step = number
            self.state.epoch = number / len(requests)
            losses.append(loss_trace[-1])
            self.log({"loss": loss_trace[-1], "edit_objective_start": objective_trace[0], "edit_objective_end": objective_trace[-1],
                      "edit_weight_change": change})
        return losses
