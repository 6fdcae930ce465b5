"""Causal tracing: which hidden states, MLP and attention outputs carry a fact from its subject to the answer.

Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022
(ROME), section 2 and ``experiments/causal_trace.py``. For each row:

* a clean run of the prompt gives every state of the network and
  ``p_clean``, the probability of the answer;
* ``samples`` corrupted runs add Gaussian noise ``ε · N(0, I)`` to the input
  embeddings of the subject's tokens, with ``ε = noise_scale × σ`` and ``σ`` the
  standard deviation of the subject tokens' embeddings over all rows (ROME's
  ``collect_embedding_std``; ``noise_scale`` 3, its ``s3`` default); their mean
  probability is ``p_corrupted``;
* for each token ``t`` and layer ``l``, the corrupted runs are repeated with one
  clean state copied back at ``t``: the decoder layer's output (``hidden``), or the
  MLP or attention output over a window of ``window`` layers around ``l``
  (``[l - window // 2, l + ceil(window / 2))``, clipped; ROME: 10). The indirect
  effect is ``IE(t, l) = p_restored - p_corrupted``.

Rows of different lengths average together by ROME's token categories (first,
middle and last subject token, first subsequent token, further tokens, last
token; a middle or further token counts one each, as ROME's ``add_all``). The
per-row maps are kept too. The selection is the ``top_layers`` layers with the
highest mean MLP effect at the last subject token (ROME edits the one at the
peak), restricted to the MLP's output projection (``down_proj``, GPT-2's
``mlp.c_proj``): the matrix ROME rewrites, whose columns are the MLP's
key-value memories. ``select_modules=mlp`` selects every MLP weight of those layers.

Exact shortcuts (the numbers are those of the plain computation, see the tests):

* a token before the subject is never corrupted, so restoring it changes
  nothing: its effect is 0 without a run;
* restoring a state at token ``t`` leaves every earlier token as in the
  corrupted run, so each restoration reruns only tokens ``t..`` on top of the
  corrupted run's key/value cache (``reuse_prefix``), many restorations and
  noise samples in one batch (``batch_size`` sequences per forward pass);
* on Llama-style models a restoration also reruns only the layers from the
  first one it changes (layer ``l`` for ``hidden``, the window's first layer
  for ``mlp``/``attn``), on the corrupted run's inputs to that layer; the
  restorations are ordered by that layer so a batch starts where its first
  one does (:mod:`unlearnkit.localization.partial_runs`).

Named differences from the reference:

* ``target``: ROME scores the clean run's top-1 next token, which for the known
  facts it traces is the answer's first token. Unlearning traces the given
  answer, so the default is ``answer_first_token`` (the first token of the row's
  answer as the prompt format tokenises it); ``clean_top1`` is ROME's choice and
  ``answer_mean`` the mean probability of every answer token (closing EOS included),
  with the answer after the prompt as the model would read it.
* ``σ`` is measured on the subject tokens as they occur in the prompts
  (ROME: each subject tokenised on its own), so it needs no other text.
* Every row's noise comes from a generator seeded with ``seed`` (ROME: a
  ``RandomState(1)`` per traced prompt, the same).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization.base import Localization, LocatedSelection, config_settings, model_signature, register_localizer
from unlearnkit.localization.partial_runs import recording_layer_inputs, starting_at_layer, supports_layer_skipping
from unlearnkit.localization.subjects import subject_of, subject_token_span
from unlearnkit.parameters import decoder_layers
from unlearnkit.settings import check_choice, check_field_types, check_seed, require_at_least, require_positive

KINDS = ("hidden", "mlp", "attn")
TOKEN_RANGES = ("all", "subject_last")
TARGETS = ("answer_first_token", "answer_mean", "clean_top1")
SELECT_MODULES = ("mlp_output", "mlp")
# ROME's token categories (its average_causal_effects notebook), the rows of the averaged maps.
TOKEN_CATEGORIES = (
    "first subject token", "middle subject tokens", "last subject token", "first subsequent token", "further tokens", "last token",
)
LAST_SUBJECT = TOKEN_CATEGORIES.index("last subject token")
# Child names of a decoder block's sublayers in the common architectures (Llama/Qwen/Mistral, GPT-2, GPT-NeoX, Falcon, OPT...).
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
# The MLP's output projection, what ROME rewrites, by its name in those architectures.
MLP_OUTPUT_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")


@dataclass
class CausalTraceConfig:
    samples: int = field(default=10, metadata={"help": "Corrupted runs per row, each with its own noise (ROME: 10)."})
    noise_scale: float = field(
        default=3.0, metadata={"help": "Noise std as a multiple of the subject tokens' embedding std (ROME's s3: 3)."})
    window: int = field(default=10, metadata={"help": "Layers restored together for the mlp and attn maps (ROME: 10)."})
    target: str = field(
        default="answer_first_token",
        metadata={"help": "What is scored: 'answer_first_token', 'answer_mean' (every answer token's mean probability) "
                          "or 'clean_top1' (ROME's: the clean run's top-1 next token)."})
    kinds: str = field(
        default="hidden,mlp,attn",
        metadata={"help": "States restored, comma-separated from hidden, mlp, attn (mlp is needed: it chooses the layers)."})
    tokens: str = field(
        default="all",
        metadata={"help": "Tokens restored: 'all' (the whole map) or 'subject_last' (ROME's token_range: only the last subject "
                          "token, all the selection needs, about T times cheaper)."})
    top_layers: int = field(default=1, metadata={"help": "Layers selected: those of highest MLP effect at the last subject token."})
    select_modules: str = field(
        default="mlp_output",
        metadata={"help": "What the selected layers may change: 'mlp_output' (the MLP's output projection, which ROME edits) "
                          "or 'mlp' (every MLP weight)."})
    subject_field: str | None = field(
        default=None, metadata={"help": "Row field holding the subject (None: the first of subject, author, entity)."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass of the corrupted runs."})
    seed: int = field(default=1, metadata={"help": "Seed of every row's noise (ROME: 1)."})
    reuse_prefix: bool = field(
        default=True,
        metadata={"help": "Rerun only the tokens from the restored one on, over the corrupted run's cache, and on "
                          "Llama-style models only the layers from the first restored one (exact; false reruns whole prompts)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, samples=self.samples, window=self.window, top_layers=self.top_layers, batch_size=self.batch_size)
        require_positive(noise_scale=self.noise_scale)
        check_choice("target", self.target, TARGETS)
        check_choice("select_modules", self.select_modules, SELECT_MODULES)
        check_choice("tokens", self.tokens, TOKEN_RANGES)
        check_seed("seed", self.seed)
        kinds = self.kind_list
        for kind in kinds:
            check_choice("kinds", kind, KINDS)
        if "mlp" not in kinds:
            raise UnlearnkitError(f"kinds={self.kinds!r} lacks mlp, whose effect at the last subject token chooses the layers; "
                                  "add it (e.g. kinds=mlp or kinds=hidden,mlp,attn).")

    @property
    def kind_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(part.strip() for part in self.kinds.split(",") if part.strip()))


# ------------------------------------------------------------------------------------------- pure scores


def window_layers(layer: int, window: int, num_layers: int) -> range:
    """Layers restored together around ``layer``: ``[layer - window // 2, layer + ceil(window / 2))`` clipped (ROME's)."""
    return range(max(0, layer - window // 2), min(num_layers, layer + math.ceil(window / 2)))


def noise_std(subject_embeddings: Tensor, scale: float) -> float:
    """``scale`` × the standard deviation of every entry of the subject tokens' embeddings ``(N, d)`` (ROME's ε)."""
    return scale * subject_embeddings.float().std().item()


def answer_probability(logits: Tensor, target_ids: Tensor) -> Tensor:
    """Mean probability of the targets: ``logits`` ``(B, n, V)`` at the ``n`` positions predicting ``target_ids`` ``(n,)``; ``(B,)``."""
    probabilities = torch.softmax(logits.float(), dim=-1)  # (B, n, V)
    index = target_ids.to(logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return probabilities.gather(-1, index).squeeze(-1).mean(dim=1)


def indirect_effect(restored: Tensor, corrupted: Tensor) -> Tensor:
    """``IE = mean_s p_restored[r, s] - mean_s p_corrupted[s]``: restored ``(R, S)``, corrupted ``(S,)`` -> ``(R,)``."""
    return restored.float().mean(dim=1) - corrupted.float().mean()


def category_sums(effects: Tensor, span: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """One row's map ``(T, L)`` summed into ROME's token categories: ``(6, L)`` sums and ``(6,)`` token counts.

    ``span`` is the subject's ``[start, end)``; a one-token subject is both first
    and last subject token, a subject just before the last token has no further tokens.
    Tokens not traced (NaN) are left out.
    """
    start, end = span
    last = effects.shape[0] - 1
    groups = (
        [start],
        list(range(start + 1, end - 1)),
        [end - 1],
        [end] if end <= last else [],
        list(range(end + 1, last)),
        [last],
    )
    traced = ~effects.isnan().any(dim=1)  # a token left out by tokens=subject_last counts in no category
    groups = tuple([position for position in group if traced[position]] for group in groups)
    sums = torch.stack([effects[group].sum(dim=0) if group else torch.zeros(effects.shape[1]) for group in groups])
    return sums, torch.tensor([float(len(group)) for group in groups])


def average_by_category(maps: Sequence[Tensor], spans: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Every row's map pooled by token category: ``(6, L)`` means (NaN where no row has the category) and ``(6,)`` counts."""
    totals = [category_sums(effects.float(), span) for effects, span in zip(maps, spans, strict=True)]
    sums = torch.stack([total for total, _ in totals]).sum(dim=0)
    counts = torch.stack([count for _, count in totals]).sum(dim=0)
    means = sums / counts.unsqueeze(1)  # 0/0 -> NaN: a category no row has
    return means, counts


# ------------------------------------------------------------------------------------------- the model's sites


@dataclass(frozen=True)
class Sites:
    """Where states are read and restored: the embedding module and each decoder block, its MLP and its attention."""

    embedding: nn.Module
    layers_prefix: str
    modules: dict[str, tuple[nn.Module, ...]]  # kind -> one module per layer

    @property
    def num_layers(self) -> int:
        return len(self.modules["hidden"])


def _child(block: nn.Module, names: Sequence[str], what: str) -> tuple[str, nn.Module]:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise UnlearnkitError(f"Causal tracing found no {what} in the decoder block {type(block).__name__} (looked for "
                          f"{', '.join(names)}; it has {', '.join(name for name, _ in block.named_children())}). "
                          "It needs a standard decoder-only transformer.")


def find_sites(model: nn.Module) -> Sites:
    prefix, blocks = decoder_layers(model)
    embedding = model.get_input_embeddings()
    if embedding is None:
        raise UnlearnkitError(f"{type(model).__name__} has no input embedding to corrupt; causal tracing needs one.")
    return Sites(embedding, prefix, {
        "hidden": tuple(blocks),
        "mlp": tuple(_child(block, MLP_NAMES, "MLP")[1] for block in blocks),
        "attn": tuple(_child(block, ATTENTION_NAMES, "attention")[1] for block in blocks),
    })


def mlp_target_modules(model: nn.Module, select: str) -> tuple[str, ...]:
    """The selection's target_modules, relative to a decoder block: its MLP's output projection or every MLP weight."""
    _, blocks = decoder_layers(model)
    mlp_name, mlp = _child(blocks[0], MLP_NAMES, "MLP")
    owners = [name for name, module in mlp.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    if select == "mlp":
        return tuple(f"{mlp_name}.{name}" for name in owners)
    outputs = [name for name in owners if name.rsplit(".", 1)[-1] in MLP_OUTPUT_NAMES]
    if len(outputs) != 1:
        raise UnlearnkitError(f"Could not tell the output projection of {type(mlp).__name__} among {', '.join(owners)}; "
                              "set select_modules=mlp to select every MLP weight.")
    return (f"{mlp_name}.{outputs[0]}",)


# ------------------------------------------------------------------------------------------- hooks


def _first_tensor(output: object) -> Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def _with_first_tensor(output: object, tensor: Tensor) -> object:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@dataclass
class _Patch:
    """What the hooks do in the next forward pass; positions are those of the input passed (after any cached prefix)."""

    noise: Tensor | None = None  # (B, n_subject, d), added at the subject's positions
    subject_positions: tuple[int, int] = (0, 0)  # where the subject's tokens sit in the input passed
    restore_position: int = 0
    restore: dict[tuple[str, int], tuple[Tensor, Tensor]] = field(default_factory=dict)  # site -> ((B,) mask, (d,) clean state)
    record: dict[tuple[str, int], Tensor] | None = None  # site -> (T, d) states of a batch-of-one clean run


@contextlib.contextmanager
def _hooks(sites: Sites, patch: _Patch) -> Iterator[None]:
    def corrupt(module: nn.Module, inputs: object, output: Tensor) -> Tensor | None:
        if patch.noise is None:
            return None
        start, end = patch.subject_positions
        if start >= end:
            return None
        output = output.clone()
        output[:, start:end] += patch.noise[:, patch.noise.shape[1] - (end - start):].to(output.dtype)
        return output

    def site_hook(site: tuple[str, int]):
        def hook(module: nn.Module, inputs: object, output: object) -> object:
            states = _first_tensor(output)
            if patch.record is not None:
                patch.record[site] = states[0].detach()
            if site not in patch.restore:
                return None
            mask, clean = patch.restore[site]
            states = states.clone()
            states[mask, patch.restore_position] = clean.to(states.dtype)
            return _with_first_tensor(output, states)
        return hook

    handles = [sites.embedding.register_forward_hook(corrupt)]
    for kind, modules in sites.modules.items():
        handles += [module.register_forward_hook(site_hook((kind, layer))) for layer, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------- one row


@dataclass
class EncodedRow:
    """A row ready to trace: the ids passed (prompt, plus the answer but its last token for ``answer_mean``) and the targets."""

    input_ids: list[int]
    prompt_length: int
    span: tuple[int, int]
    target_ids: list[int] | None  # None: the clean run's top-1 (clean_top1)
    subject: str


@dataclass
class RowTrace:
    p_clean: float
    p_corrupted: float
    effects: dict[str, Tensor]  # kind -> (prompt_length, L)


def _cache_prefix(cache: object, samples: Tensor, length: int, config: object) -> object:
    from transformers import DynamicCache

    return DynamicCache([(layer.keys[samples, :, :length], layer.values[samples, :, :length]) for layer in cache.layers], config=config)


@torch.no_grad()
def trace_row(model: PreTrainedModel, sites: Sites, row: EncodedRow, noise: Tensor, kinds: Sequence[str], window: int,
              batch_size: int, reuse_prefix: bool = True, tokens: str = "all") -> RowTrace:
    """The indirect effects of one row; ``noise`` ``(S, n_subject, d)`` is added to the subject's embeddings in run s.

    ``tokens="subject_last"`` restores the last subject token only; the other tokens' effects are NaN (not traced).
    """
    device = next(model.parameters()).device
    ids = torch.tensor(row.input_ids, device=device).unsqueeze(0)  # (1, T)
    samples = noise.shape[0]
    noise = noise.to(device)
    start, end = row.span
    num_layers = sites.num_layers

    def probabilities(input_ids: Tensor, patch: _Patch, cache: object = None) -> tuple[Tensor, object]:
        with _hooks(sites, patch):
            output = model(input_ids=input_ids, past_key_values=cache, use_cache=reuse_prefix and cache is None,
                           logits_to_keep=len(targets))
        return answer_probability(output.logits, targets), output.past_key_values

    clean = _Patch(record={})
    targets = torch.tensor(row.target_ids or [0], device=device)
    with _hooks(sites, clean):
        logits = model(input_ids=ids, logits_to_keep=len(targets)).logits
    if row.target_ids is None:
        targets = logits[0, -1:].argmax(dim=-1)
    p_clean = answer_probability(logits, targets).item()
    # With layer skipping, a restoration reruns only the layers from the first one it changes, on the corrupted run's inputs to it.
    skipping = reuse_prefix and supports_layer_skipping(model)
    corrupted_inputs: dict[int, Tensor] = {}  # layer -> (S, T, d) the corrupted runs' input to it (noise included)
    with recording_layer_inputs(model, corrupted_inputs) if skipping else contextlib.nullcontext():
        corrupted, cache = probabilities(ids.expand(samples, -1), _Patch(noise=noise, subject_positions=(start, end)))
    p_corrupted = corrupted.mean()

    restorations = [(kind, layer) for kind in kinds for layer in range(num_layers)]
    kind_of = torch.tensor([kinds.index(kind) for kind, _ in restorations], device=device)
    layer_of = torch.tensor([layer for _, layer in restorations], device=device)
    # in_window[l, m]: restoring an mlp/attn "layer l" copies back the sublayer of layer m.
    in_window = torch.zeros(num_layers, num_layers, dtype=torch.bool, device=device)
    for layer in range(num_layers):
        in_window[layer, list(window_layers(layer, window, num_layers))] = True
    effects = {kind: torch.zeros(row.prompt_length, num_layers) for kind in kinds}
    traced = range(start, row.prompt_length)  # earlier tokens are never corrupted: their effect is 0
    if tokens == "subject_last":
        traced = range(end - 1, end)
        for kind in kinds:
            effects[kind][:] = math.nan
            effects[kind][:start] = 0.0
    entries = len(restorations) * samples
    # The first layer each restoration changes; with layer skipping a batch holds entries of one such layer and starts there.
    first_layer = torch.tensor([layer if kind == "hidden" else window_layers(layer, window, num_layers)[0] for kind, layer in restorations],
                               device=device)
    batches = _entry_batches(first_layer.repeat_interleave(samples) if skipping else torch.zeros(entries, dtype=torch.long, device=device),
                              batch_size)
    for position in traced:
        first = position if reuse_prefix else 0
        restored = torch.empty(entries, device=device)
        for entry in batches:
            restoration, sample = entry // samples, entry % samples
            patch = _Patch(noise=None if skipping else noise[sample], subject_positions=(max(start - first, 0), max(end - first, 0)),
                           restore_position=position - first)
            for kind_index, kind in enumerate(kinds):
                chosen = kind_of[restoration] == kind_index
                for layer in range(num_layers):
                    if kind == "hidden":
                        mask = chosen & (layer_of[restoration] == layer)
                    else:
                        mask = chosen & in_window[layer_of[restoration], layer]
                    if mask.any():
                        patch.restore[(kind, layer)] = (mask, clean.record[(kind, layer)][position])
            prefix = _cache_prefix(cache, sample, first, model.config) if first else None
            if skipping:
                layer = int(first_layer[restoration].min())
                with _hooks(sites, patch), starting_at_layer(model, layer):
                    output = model(inputs_embeds=corrupted_inputs[layer][sample, first:], past_key_values=prefix,
                                   use_cache=prefix is not None, logits_to_keep=len(targets))
                restored[entry] = answer_probability(output.logits, targets)
            else:
                restored[entry], _ = probabilities(ids[:, first:].expand(len(entry), -1), patch, prefix)
        effect = indirect_effect(restored.view(len(restorations), samples), corrupted)
        for (kind, layer), value in zip(restorations, effect.tolist(), strict=True):
            effects[kind][position, layer] = value
    return RowTrace(p_clean, p_corrupted.item(), effects)


def _entry_batches(group: Tensor, batch_size: int) -> list[Tensor]:
    """Entry indices in batches of at most ``batch_size``, each within one value of ``group`` (E,), groups in increasing order."""
    return [chunk for value in torch.unique(group) for chunk in torch.split((group == value).nonzero().flatten(), batch_size)]


# ------------------------------------------------------------------------------------------- rows and prompts


def encode_rows(tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], fmt: PromptFormat, config: CausalTraceConfig) -> list[EncodedRow]:
    """Check every row and find its subject's tokens, before any model run."""
    if not rows:
        raise UnlearnkitError("Causal tracing got no rows; give it the forget rows whose facts to locate.")
    encoded = []
    for index, row in enumerate(rows, start=1):
        if not all(isinstance(row.get(key), str) and row[key].strip() for key in ("question", "answer")):
            raise UnlearnkitError(f"row {index} needs a non-empty 'question' and 'answer'.")
        subject = subject_of(row, config.subject_field, index)
        prompt_ids, answer_ids = fmt.qa_ids(tokenizer, row["question"], row["answer"])
        text = fmt.prompt_text(tokenizer, row["question"])
        plain_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        offset = len(prompt_ids) - len(plain_ids)  # tokens the format adds before the text (BOS)
        if offset < 0 or prompt_ids[offset:] != plain_ids:
            raise UnlearnkitError(f"row {index}: the prompt's tokens do not match its text, so the subject's tokens cannot be "
                                  f"found; use --prompt-format plain or chat.")
        span_start, span_end = subject_token_span(tokenizer, text, subject)
        span = (span_start + offset, span_end + offset)
        if config.target == "answer_mean":
            ids, targets = prompt_ids + answer_ids[:-1], answer_ids
        else:
            ids, targets = prompt_ids, (answer_ids[:1] if config.target == "answer_first_token" else None)
        encoded.append(EncodedRow(ids, len(prompt_ids), span, targets, subject))
    return encoded


def row_noise(config: CausalTraceConfig, subject_length: int, hidden_size: int, std: float) -> Tensor:
    """The ``(samples, subject_length, d)`` noise of a row: from a generator seeded with ``seed``, as ROME's per-prompt RandomState."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn((config.samples, subject_length, hidden_size), generator=generator) * std


@register_localizer(
    "causal_trace",
    config=CausalTraceConfig,
    citation='Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022',
    summary="Corrupt the subject's embeddings, restore one clean state per token and layer (hidden, MLP, attention), "
            "select the layers whose MLP restores the answer most at the last subject token.",
)
def localize(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], fmt: PromptFormat,
             config: CausalTraceConfig) -> Localization:
    encoded = encode_rows(tokenizer, rows, fmt, config)
    sites = find_sites(model)
    target_modules = mlp_target_modules(model, config.select_modules)
    if config.top_layers > sites.num_layers:
        raise UnlearnkitError(f"top_layers={config.top_layers} but the model has {sites.num_layers} layers; lower it.")
    kinds = config.kind_list
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            weight = sites.embedding.weight
            subject_ids = torch.tensor([ids for row in encoded for ids in row.input_ids[row.span[0]:row.span[1]]], device=weight.device)
            std = noise_std(sites.embedding(subject_ids), config.noise_scale)
        traces = []
        for row in encoded:
            noise = row_noise(config, row.span[1] - row.span[0], weight.shape[1], std)
            traces.append(trace_row(model, sites, row, noise, kinds, config.window, config.batch_size, config.reuse_prefix,
                                    config.tokens))
    finally:
        model.train(was_training)
    scores: dict[str, Tensor] = {}
    counts = None
    for kind in kinds:
        maps = [trace.effects[kind] for trace in traces]
        scores[f"ie/{kind}"], counts = average_by_category(maps, [row.span for row in encoded])
        scores.update({f"row/{index}/ie/{kind}": effects for index, effects in enumerate(maps)})
    scores["category_counts"] = counts
    scores["p_clean"] = torch.tensor([trace.p_clean for trace in traces])
    scores["p_corrupted"] = torch.tensor([trace.p_corrupted for trace in traces])
    layer_scores = scores["ie/mlp"][LAST_SUBJECT].clone()  # (L,); a view would share storage, which safetensors refuses
    scores["layer_scores"] = layer_scores
    layers = tuple(sorted(torch.topk(layer_scores, config.top_layers).indices.tolist()))
    notes = {
        "token_categories": list(TOKEN_CATEGORIES),
        "kinds": list(kinds),
        "noise_std": std,
        "mean_p_clean": scores["p_clean"].mean().item(),
        "mean_p_corrupted": scores["p_corrupted"].mean().item(),
        "layer_scores": "mean MLP indirect effect at the last subject token, per layer",
        "rows": [{"subject": row.subject, "subject_span": list(row.span), "prompt_length": row.prompt_length,
                  "tokens": tokenizer.convert_ids_to_tokens(row.input_ids[:row.prompt_length]),
                  "p_clean": trace.p_clean, "p_corrupted": trace.p_corrupted} for row, trace in zip(encoded, traces, strict=True)],
    }
    return Localization(
        localizer="causal_trace",
        settings=config_settings(config),
        scores=scores,
        selection=LocatedSelection(layers=layers, target_modules=target_modules),
        model_signature=model_signature(model),
        notes=notes,
    )
