"""Models and tokenizers: the tiny built-in ones, and loading any causal LM by name or path."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
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

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


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
    check_model_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not load a tokenizer from {name_or_path}: {error}") from None
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
    saves it) loads its base model and applies the adapter.
    """
    path = Path(name_or_path)
    check_model_source(name_or_path)
    if (path / "adapter_config.json").is_file():
        return _load_adapter(path, trust_remote_code, dtype)
    if path.exists():
        name_or_path = str(path.resolve())  # an adapter saved later records this as its base: keep it absolute
        if not any(path.glob("*.safetensors")):
            raise UnlearnkitError(
                f"Model folder {path} holds no .safetensors weights. unlearnkit never unpickles weights; "
                "convert them once with transformers: AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path)."
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), trust_remote_code=trust_remote_code, dtype=dtype, use_safetensors=True
        )
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not load a causal language model from {name_or_path}: {error}") from None
    # Evaluation runs where the model sits; training moves it itself, so a GPU, when present, serves both.
    return model.to("cuda") if torch.cuda.is_available() else model


def _load_adapter(path: Path, trust_remote_code: bool, dtype: str | torch.dtype) -> PreTrainedModel:
    from peft import PeftConfig, PeftModel

    if not (path / "adapter_model.safetensors").is_file():
        raise UnlearnkitError(f"Adapter folder {path} holds no adapter_model.safetensors; unlearnkit never unpickles weights.")
    base = PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base:
        raise UnlearnkitError(f"Adapter folder {path} does not name its base model (base_model_name_or_path).")
    model = load_model(base, trust_remote_code, dtype)
    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not apply the adapter in {path} to {base}: {error}") from None


def check_model_source(name_or_path: str | Path) -> None:
    """A local model must be an existing folder; anything else is taken as a hub name."""
    path = Path(name_or_path)
    if path.exists() and not path.is_dir():
        raise UnlearnkitError(f"Model path {path} is a file; pass the model's folder (with config.json).")
    if not path.exists() and looks_like_path(str(name_or_path)):
        raise UnlearnkitError(f"Model folder {name_or_path} does not exist.")


def looks_like_path(text: str) -> bool:
    """Hub names are ``owner/name``; anything with a leading ``.``/``/``/``~`` or more slashes is a path."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1


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
