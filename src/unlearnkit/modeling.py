"""Models and tokenizers: the tiny built-in ones, and loading any causal LM by name (pretrained or hub) or path."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from unlearnkit.errors import UnlearnkitError
from unlearnkit.pretrained import ensure_converted, is_pretrained_name, suggest_pretrained

logger = logging.getLogger("unlearnkit")

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
# A hub repository id as the hub spells it: org/name, each part of letters, digits and _-. (not first or last).
HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?/[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
# Seconds to wait for the hub to answer whether a model exists: long enough for a slow link, short next to
# the minute of retries transformers spends before reporting a dead network.
HUB_TIMEOUT_SECONDS = 5.0
# The file that marks an inference-time wrapped model (unlearnkit.inference): a wrapper around another model, never trained.
WRAPPER_FILE = "wrapper.json"
# Files of which a folder holding a tokenizer has at least one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "tekken.json")


@dataclass(frozen=True)
class TinyModelConfig:
    """A small Llama-architecture causal LM for the offline benchmark."""

    vocab_size: int = field(default=2048, metadata={"help": "Byte-level BPE vocabulary size (trained on the benchmark text)."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the residual stream."})
    intermediate_size: int = field(default=256, metadata={"help": "Width of the MLP's hidden layer."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (must divide hidden_size)."})
    max_length: int = field(default=128, metadata={"help": "Maximum sequence length in tokens."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UnlearnkitError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}.")
        if min(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_layers, self.max_length) < 1:
            raise UnlearnkitError(f"Every size in the model configuration must be positive: {asdict(self)}.")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer whose encodings start with ``<s>``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=4096
    )


def build_tiny_model(config: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized to ``tokenizer``."""
    torch.manual_seed(seed)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(llama)


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer by hub name or folder; give it a pad token if it lacks one (EOS, as is usual)."""
    source = check_model_source(name_or_path)
    if source.folder is not None:
        check_tokenizer_folder(source.folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name, trust_remote_code=trust_remote_code, **source.hub_arguments())
    except (OSError, ValueError) as error:  # a damaged tokenizer.json is a JSONDecodeError, a ValueError
        raise UnlearnkitError(source.failure("a tokenizer", error)) from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UnlearnkitError(f"The tokenizer of {name_or_path} has neither a pad nor an EOS token; add a pad token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path, trust_remote_code: bool = False, dtype: str | torch.dtype = "auto"
) -> PreTrainedModel:
    """Load a causal LM by hub name or local folder (safetensors only), on the GPU when there is one.

    A folder holding a LoRA adapter (``adapter_config.json``, as ``lora_merge=false``
    saves it) loads its base model and applies the adapter. A model that does not
    load whole and sound is refused, never used: damaged weight files, a config
    that does not fit the weights (transformers would fill the gaps with random
    weights), NaN or infinite weights.
    """
    source = check_model_source(name_or_path)
    model = _load_any(source, trust_remote_code, dtype)
    check_finite_weights(model, source.name)
    # Evaluation runs where the model sits; training moves it itself, so a GPU, when present, serves both.
    return model.to("cuda") if torch.cuda.is_available() else model


def _load_any(source: ModelSource, trust_remote_code: bool, dtype: str | torch.dtype) -> PreTrainedModel:
    if source.folder is not None and (source.folder / "adapter_config.json").is_file():
        return _load_adapter(source.folder, trust_remote_code, dtype)
    return _load_weights(source, trust_remote_code, dtype)


def _load_weights(source: ModelSource, trust_remote_code: bool, dtype: str | torch.dtype) -> PreTrainedModel:
    """A full model, checked before loading (folder contents) and after (every weight came from the files)."""
    if source.folder is not None:
        check_model_folder(source.folder)
    try:
        # Mismatched shapes are reported by output_loading_info (and refused below) rather than raised as a
        # RuntimeError that names no file; nothing reinitialised is ever used.
        model, info = AutoModelForCausalLM.from_pretrained(
            source.name, trust_remote_code=trust_remote_code, dtype=dtype, use_safetensors=True,
            ignore_mismatched_sizes=True, output_loading_info=True, **source.hub_arguments(),
            adapter_kwargs=source.hub_arguments(),  # transformers looks for an adapter config separately
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise UnlearnkitError(source.failure("a causal language model", error)) from None
    check_loading_info(info, source.name)
    return model


def _load_adapter(path: Path, trust_remote_code: bool, dtype: str | torch.dtype) -> PreTrainedModel:
    from peft import PeftConfig, PeftModel

    from unlearnkit.parameters import without_peft_deprecation_warning

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise UnlearnkitError(f"Adapter folder {path} holds no adapter_model.safetensors; unlearnkit never unpickles weights.")
    check_safetensors_file(weights)
    try:
        base = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    except (OSError, ValueError, TypeError) as error:
        raise UnlearnkitError(f"{path / 'adapter_config.json'} is damaged ({error}); save the adapter again.") from None
    if not base:
        raise UnlearnkitError(f"Adapter folder {path} does not name its base model (base_model_name_or_path).")
    try:
        model = _load_any(check_model_source(base), trust_remote_code, dtype)
    except UnlearnkitError as error:
        raise UnlearnkitError(
            f"The adapter in {path} applies to the base model {base} (base_model_name_or_path in adapter_config.json), "
            f"which cannot be loaded: {error} Put the base model back there, or correct that path."
        ) from None
    try:
        with without_peft_deprecation_warning():
            return PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: adapter shapes that do not fit the base
        raise UnlearnkitError(f"Could not apply the adapter in {path} to {base}: {error}") from None


@dataclass(frozen=True)
class ModelSource:
    """Where a model or tokenizer loads from: a local folder, or a hub name (from the local cache only when ``cache_only``).

    ``hub_note`` ends the message when a cache-only hub name is not in the cache: why only the cache was searched.
    """

    name: str
    folder: Path | None = None
    cache_only: bool = False
    hub_note: str = ""

    def hub_arguments(self) -> dict[str, Any]:
        return {"local_files_only": True} if self.cache_only else {}

    def failure(self, what: str, error: Exception) -> str:
        """The message for a failure to load ``what`` from this source."""
        reason = " ".join(str(error).split())  # library messages span lines; keep one
        if self.folder is not None:
            return f"Could not load {what} from {self.name}: {reason}"
        if self.cache_only and isinstance(error, OSError):  # how transformers says the cache lacks it
            return f"No local folder {self.name} exists, and {self.hub_note}"
        return f"No local folder {self.name} exists, and {what} named {self.name} could not be loaded from the Hugging Face hub: {reason}"


def check_model_source(name_or_path: str | Path) -> ModelSource:
    """Decide, before any loading, where ``name_or_path`` comes from; a name that can be neither fails at once.

    A name that exists locally is a local folder. A pretrained model's name
    (``smollm2-135m``, :mod:`unlearnkit.pretrained`) is its converted folder,
    converted on first use. Any other name is a hub name only in the hub's
    exact ``org/name`` form; anything else (``mymodel``, ``runs/x/model``,
    ``./m``, names with spaces or backslashes) is a missing folder, reported at
    once instead of after a minute of network retries (with the pretrained
    name it may have meant).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.exists() and is_pretrained_name(text):
        path = ensure_converted(text)  # converted once into the cache, checked on every use
    if path.exists():
        if not path.is_dir():
            raise UnlearnkitError(f"Model path {path} is a file; pass the model's folder (with config.json).")
        check_not_results_folder(path)
        return ModelSource(str(path.resolve()), path.resolve())  # absolute: an adapter saved later records it as its base
    if not is_hub_name(text):
        suggestion = suggest_pretrained(text)
        raise UnlearnkitError(f"Model folder {text} does not exist." + (
            f"{suggestion} (`unlearnkit models` lists the pretrained models usable by name)" if suggestion else ""))
    return _hub_source(text)


def check_not_results_folder(folder: Path) -> None:
    """Refuse an unlearnkit results folder given as a model, naming the model folder inside it when it has one.

    A results folder's config.json records the command that wrote it (``"command": "unlearn"``), where a
    model's names its architecture: without this check it would be refused for lacking weights, with advice
    to convert pickled weights that do not exist.
    """
    for manifest in ("config.json", "bench.json"):
        try:
            record = json.loads((folder / manifest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # none, or damaged: the model checks report a model folder's damaged config.json
        if not isinstance(record, dict) or not isinstance(record.get("command"), str) or "model_type" in record:
            continue
        command = record["command"]
        if (folder / "model").is_dir():
            raise UnlearnkitError(f"{folder} is a results folder of `unlearnkit {command}`, not a model folder; its model is in "
                                  f"{folder / 'model'}: pass that folder.")
        runs = sorted(run.parent for run in folder.glob("*/model") if run.is_dir())
        if runs:
            raise UnlearnkitError(f"{folder} is the folder of `unlearnkit {command}`, not a model folder; each run's model is "
                                  f"in its run folder's model/ (e.g. {runs[0] / 'model'}): pass one of those.")
        raise UnlearnkitError(f"{folder} is a results folder of `unlearnkit {command}`, which holds no model; pass a model "
                              "folder (an unlearn or finetune results folder keeps its model in model/).")


def is_hub_name(text: str) -> bool:
    """Whether ``text`` is spelled as a hub repository id ``org/name`` (one slash; letters, digits, ``_-.``; no ``--`` or ``..``)."""
    return bool(HUB_NAME.fullmatch(text)) and "--" not in text and ".." not in text


def _hub_source(name: str) -> ModelSource:
    """A hub name, asked about once with a short timeout and no retries, so a wrong name or a dead network fails fast.

    Offline (``HF_HUB_OFFLINE``), or when the hub cannot be reached, the name
    loads from the local Hugging Face cache only; transformers would otherwise
    retry for about a minute before failing.
    """
    if is_offline_mode():
        return ModelSource(name, cache_only=True, hub_note=(
            f"{name} is not in the local Hugging Face cache (HF_HUB_OFFLINE is set, so the hub was not asked). "
            "Check the name or path, or unset HF_HUB_OFFLINE to download it."))
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=HUB_TIMEOUT_SECONDS)
    except RepositoryNotFoundError:  # also a gated or private repository the user may not read
        raise UnlearnkitError(
            f"No local folder {name} exists, and the Hugging Face hub has no model {name} that you can access. Check the "
            "name or path; for a private or gated model, log in first (hf auth login)."
        ) from None
    except RemoteEntryNotFoundError:
        pass  # the repository exists without config.json (a tokenizer alone?): transformers says what it lacks
    except Exception as error:  # noqa: BLE001 - any network failure (DNS, proxy, timeout, 5xx): try the local cache
        logger.warning("the Hugging Face hub could not be reached (%s); looking for %s in the local cache", type(error).__name__, name)
        return ModelSource(name, cache_only=True, hub_note=(
            f"the Hugging Face hub could not be reached ({type(error).__name__}) to download {name}, which the local "
            "cache does not hold. Check the name or path, and the network."))
    return ModelSource(name)


def check_model_folder(folder: Path) -> None:
    """Refuse, with the file to fix, a model folder transformers would fail on with a traceback or load wrongly."""
    if (folder / WRAPPER_FILE).is_file():
        raise UnlearnkitError(
            f"{folder} is a wrapped model ({WRAPPER_FILE}): an inference-time wrapper around another model, which eval, audit, "
            "real-knowledge and serve accept. This command needs a plain model folder: use the target model the wrapper names "
            f"('target' in {WRAPPER_FILE})."
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise UnlearnkitError(
            f"Model folder {folder} holds no .safetensors weights. unlearnkit never unpickles weights; "
            "convert them once with transformers: AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path)."
        )
    config = read_config(folder)
    if config is None:
        raise UnlearnkitError(f"Model folder {folder} has no config.json, so its architecture is unknown; "
                              "pass the folder of a model saved with save_pretrained (config.json and .safetensors weights).")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UnlearnkitError(
            f"{folder / 'config.json'} names no model_type (such as \"model_type\": \"llama\"), so the model's architecture "
            "is unknown: the file is damaged or not a transformers config. Restore it from where the model came from."
        )
    for path in weights:
        check_safetensors_file(path)


def read_config(folder: Path) -> dict[str, Any] | None:
    """``folder``'s config.json as a dict (None when there is none); a file that is not a JSON object is refused."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UnlearnkitError(f"Cannot read {path}: {error.strerror or error}.") from None
    except ValueError as error:  # JSON or UTF-8 decoding
        raise UnlearnkitError(f"{path} is damaged: it is not valid JSON ({error}). Restore it from where the model came from "
                              "(save the model again, or download it again).") from None
    if not isinstance(config, dict):
        raise UnlearnkitError(f"{path} is damaged: it holds a JSON {type(config).__name__}, not an object of settings.")
    return config


def check_tokenizer_folder(folder: Path) -> None:
    """A local folder must hold a tokenizer; a config.json, if any, must be readable (transformers consults it)."""
    read_config(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        beside = " beside its config.json" if (folder / "config.json").is_file() else ""
        raise UnlearnkitError(
            f"Model folder {folder} holds no tokenizer (tokenizer.json or tokenizer_config.json){beside}. Save the "
            "model's tokenizer into it (tokenizer.save_pretrained(folder)) or copy its tokenizer files there."
        )


def check_safetensors_file(path: Path) -> None:
    """Read a .safetensors file's header: a truncated or corrupted file fails here, named, rather than inside transformers.

    The header lists every tensor's byte range, so a file cut short is caught;
    a changed byte inside a tensor is not (the format has no checksum), unless
    it makes a weight non-finite (see :func:`check_finite_weights`).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise UnlearnkitError(f"Weights file {path} is damaged ({error}). Save the model again, or download it again.") from None


def check_loading_info(info: dict[str, Any], name: str) -> None:
    """Refuse a model whose weights did not all come from its files: transformers would use random values instead."""
    problems = []
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        key, saved, expected = mismatched[0]
        problems.append(f"{len(mismatched)} tensor(s) have another shape in the weights than config.json implies "
                        f"(e.g. {key}: {list(saved)} saved, {list(expected)} expected)")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are not in the weights (e.g. {missing[0]})")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the weights have no place in the model config.json describes "
                        f"(e.g. {unexpected[0]})")
    problems += [str(message) for message in info.get("error_msgs") or []]
    if problems:
        raise UnlearnkitError(
            f"The weights of {name} do not fit its config.json: {'; '.join(problems)}. The config was changed or belongs "
            "to another model; restore the folder as it was saved (save the model again, or download it again)."
        )


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, name: str) -> None:
    """Refuse a model with a NaN or infinite weight: every score from it would be meaningless."""
    for parameter_name, parameter in model.named_parameters():
        if not parameter.is_floating_point() or parameter.device.type == "meta":
            continue
        finite = torch.isfinite(parameter)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise UnlearnkitError(
                f"The weights of {name} hold non-finite values in tensor {parameter_name} ({bad} of {parameter.numel()} "
                "are NaN or infinite): the model is damaged or its training diverged. Use an earlier or intact copy."
            )


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    artifacts: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Save model (safetensors) and tokenizer as a standard Hugging Face folder, plus any method artifacts.

    ``artifacts`` maps a file name to tensors (e.g. EUL's unlearning layers), each saved with safetensors.
    """
    from safetensors.torch import save_file

    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for name, tensors in (artifacts or {}).items():
        save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(Path(folder) / name))
