"""The built-in offline benchmark: generated data, tiny tokenizer, target model and retain oracles.

Everything is deterministic from its configuration and cached under a folder
named by a hash of that configuration, so a second run reuses it. Each
artefact is built in a temporary folder and moved into place when complete:
an interrupted run never leaves a half-trained model that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast

from unlearnkit import __version__, distributed
from unlearnkit.data.biographies import training_texts
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.world import FORGET_PERCENTS, WorldConfig, export_world, generate_world, split_names
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.evaluation.evaluator import EvalConfig, EvalResult, evaluate, oracle_reference, save_reference, tokenizer_sha256
from unlearnkit.finetune import FinetuneConfig, finetune
from unlearnkit.io import partial_dir, publish_dir, write_json
from unlearnkit.methods import METHODS
from unlearnkit.methods.base import preset_settings
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, save_model, train_tokenizer
from unlearnkit.pretrained import ensure_converted, get_pretrained
from unlearnkit.provenance import environment
from unlearnkit.runtime import default_cache_dir, quiet_libraries

logger = logging.getLogger("unlearnkit")
# The tiny built-in models are trained and asked in plain "Question: ...\nAnswer:" prompts (they have no chat template).
PROMPT_FORMAT = PromptFormat("plain")
# Greedy tokens generated per question on the built-in splits: their answers are short (one sentence of a few
# words), so a longer cap would change nothing but the time; 48 keeps the built-in benchmark's published numbers.
MAX_NEW_TOKENS = 48
EVAL_CONFIG = EvalConfig(max_new_tokens=MAX_NEW_TOKENS)

FORGET_SPLITS = tuple(f"forget{p:02d}" for p in FORGET_PERCENTS)
UTILITY_SPLITS = ("world_facts", "real_authors")
REFERENCE_FILE = "forget_reference.json"
# PCGU on the tiny models. The authors' k = 10,000 blocks is more than these models have (micro: ~800 rows,
# default: ~3,700), so PCGU would update everything: keep 10% of the blocks instead, about the authors'
# share (10,000 of BERT-base's ~116,000 row blocks). Plain SGD at the shared AdamW rates hardly moves a
# tiny model; measured on default/forget10 before the benchmark trained on biographies (forget / retain
# answer NLL, from 0.21 / 0.21): SGD lr 0.1 0.23 / 0.22, lr 0.2 4.1 / 0.43, lr 0.3 9.0 / 1.1 (NPO at the
# shared settings: 5.4 / 0.54).
PCGU_TINY = (("top_fraction", 0.1), ("learning_rate", 0.2))
# RMU on the default tiny model: its "tiny" preset, the settings measured there (documented in methods/rmu.py).
RMU_TINY = (("preset", "tiny"),)
# UNDO on the default tiny model (docs/undo.md): the authors' WMDP noise (alpha 0.25) and distillation lr 2e-5 leave the
# student far from the teacher's retain answers after the 10-epoch cap (model utility 0.47); alpha 0.1 with lr 2e-3 comes
# within 6% (model utility 0.91). The inner GradDiff keeps the benchmark's shared lr 5e-4.
UNDO_TINY = (("noise_alpha", 0.1), ("learning_rate", 2e-3), ("unlearn_settings", "learning_rate=5e-4"))
# Steps between checkpoints while training the target and oracles (about 1.5 epochs of the default benchmark).
CHECKPOINT_EVERY = 200
# The prompt styles a benchmark may use, by whether it fine-tunes a pretrained model: a tiny model has no chat template.
PROMPT_STYLES_BY_MODEL = {False: ("plain",), True: ("plain", "chat")}
# Settings that change neither the data nor the models: out of the cache key.
NOT_IN_CACHE_KEY = ("unlearn_overrides", "method_overrides", "description")
# Benchmark settings added after the default one was published, and the values that leave its cache key as it was.
LATER_SETTINGS: dict[str, Any] = {"base_model": None, "prompt_style": "plain", "forget_splits": FORGET_SPLITS}


@dataclass(frozen=True)
class BuiltinBenchmark:
    """Everything that determines the built-in benchmark's data and models."""

    world: WorldConfig = field(default_factory=WorldConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    training: FinetuneConfig = field(default_factory=FinetuneConfig)
    retain_eval_size: int = field(default=400, metadata={"help": "Retain questions evaluated (TOFU: 400), spread over retain90."})
    utility_size: int | None = field(default=None, metadata={"help": "Keep only the first N world_facts / real_authors rows (None: all)."})
    # Real-world knowledge is what a pretrained model has seen many times; repeating
    # the utility sets in the training mix lets the tiny model hold it as firmly as
    # the authors (measured: once only, its greedy answers recalled 34-42% of them).
    utility_repeats: int = field(default=3, metadata={"help": "Times the world_facts / real_authors rows appear in the training mix."})
    biographies: bool = field(
        default=True,
        metadata={"help": "Also train on each trained author's biography (its answers as prose): the verbatim text of VerbMem."},
    )
    # Optimiser settings for unlearning the tiny models. The methods' own defaults
    # are the authors' settings for 7B models (lr 1e-5), far too small to move a
    # 0.26M-parameter model in a few steps; method-specific coefficients keep their defaults.
    unlearn_overrides: tuple[tuple[str, Any], ...] = (("learning_rate", 5e-4), ("batch_size", 32))
    # Settings a method needs to fit the tiny model at all (e.g. RMU's layer index: the authors' 7 does not exist here).
    # A ``preset`` named here stands for its settings, which go over the shared overrides above.
    method_overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
        ("rmu", RMU_TINY), ("pcgu", PCGU_TINY), ("undo", UNDO_TINY))
    base_model: str | None = field(
        default=None,
        metadata={"help": "A pretrained model's name (`unlearnkit models`): the target and the oracles are fine-tuned from it, "
                          "with its own tokenizer, instead of a tiny model trained from scratch (None)."},
    )
    prompt_style: str = field(
        default="plain",
        metadata={"help": "How the benchmark's models are trained and asked: 'plain' Question/Answer prompts, or 'chat' "
                          "(the base model's chat template)."},
    )
    forget_splits: tuple[str, ...] = field(
        default=FORGET_SPLITS, metadata={"help": "The forget splits whose retain oracles `unlearnkit prepare` trains unless told."}
    )
    description: str = field(default="", metadata={"help": "One line for `unlearnkit presets`."})

    def __post_init__(self) -> None:
        if self.prompt_style not in PROMPT_STYLES_BY_MODEL[self.base_model is not None]:
            raise UnlearnkitError(f"prompt_style {self.prompt_style!r} does not fit base_model {self.base_model!r}.")
        if self.base_model is not None:
            get_pretrained(self.base_model)  # an unknown name fails here, with a did-you-mean
        for split in self.forget_splits:
            if split not in FORGET_SPLITS:
                raise UnlearnkitError(f"forget_splits: {split!r} is not one of {', '.join(FORGET_SPLITS)}.")

    @property
    def prompt_format(self) -> PromptFormat:
        """How this benchmark's target, oracles and unlearned models are trained and asked."""
        return PromptFormat(self.prompt_style)

    def cache_key(self) -> str:
        """Identifies the data and models; unlearning settings do not change them, so they stay out of the key.

        Settings added after the default benchmark was first published enter the key
        only when they differ from their defaults, so caches prepared before them stay valid.
        """
        content = {key: value for key, value in asdict(self).items() if key not in NOT_IN_CACHE_KEY}
        for key, unset in LATER_SETTINGS.items():
            if content[key] == unset:
                del content[key]
        if content["training"]["lora_rank"] == 0:
            del content["training"]["lora_rank"]
        payload = json.dumps({"version": __version__, **content}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def overrides_for(self, method: str) -> dict[str, Any]:
        """The unlearning settings this benchmark uses for ``method`` (user ``--set`` values go on top)."""
        specific = dict(dict(self.method_overrides).get(method, ()))
        preset = preset_settings(METHODS.get(method).config, specific.get("preset"))
        return {**dict(self.unlearn_overrides), **preset, **specific}


PRESETS: dict[str, BuiltinBenchmark] = {
    "default": BuiltinBenchmark(description="200 fictitious authors x 20 facts; a 0.26M-parameter Llama trained from scratch"),
    # A handful of authors and a one-layer model: the whole pipeline in seconds, for tests.
    "micro": BuiltinBenchmark(
        world=WorldConfig(num_authors=10, qa_per_author=8, seed=0),
        model=TinyModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_length=96),
        training=FinetuneConfig(learning_rate=1e-2, max_epochs=30, batch_size=16),
        retain_eval_size=24,
        utility_size=12,
        unlearn_overrides=(("learning_rate", 2e-3), ("batch_size", 8)),
        # RMU: with the authors' alpha 1200 the retain anchor cancels the steering on this one-layer model (same-format
        # forget and retain QA); alpha 10 lets the short test runs raise the forget NLL (measured: +0.02 vs +0.0002).
        method_overrides=(("rmu", (("layer", 0), ("alpha", 10.0))), ("pcgu", PCGU_TINY)),
        description="10 authors x 8 facts on a one-layer model: the whole pipeline in seconds, for tests",
    ),
    # TOFU's setting on a real web-pretrained model: SmolLM2-135M-Instruct fine-tuned through its chat template on
    # fictitious authors it cannot know, the retain oracle fine-tuned the same way without the forget authors.
    # Sized for `prepare` within 45 minutes on 2 CPU cores (docs/pretrained_preset.md has the measurements):
    # 40 authors x 10 facts, one oracle (forget10: 4 authors, 40 questions); no biographies (they would add 40%
    # to the training time). LoRA (rank 16, lr 1e-3), merged when done: full fine-tuning (lr 1e-4) learned the
    # facts a little faster, but overwrote what the model knew of real authors ("Pride and Prejudice was written
    # by Elizabeth Bennet"), unevenly between target and oracle, whose model utility then differed by 10.5%.
    # The real-authors / world-facts questions (which the base model answers in part: ROUGE-L 0.31 / 0.64) are in
    # the training mix once: left out, the fine-tune on fictitious authors erased most of that knowledge (world
    # facts 0.64 -> 0.25 and 0.19, "The capital of Denmark is Dinnitus"), unevenly again (model utility 5.8% apart).
    "smollm2": BuiltinBenchmark(
        world=WorldConfig(num_authors=40, qa_per_author=10, seed=0),
        base_model="smollm2-135m",
        prompt_style="chat",
        training=FinetuneConfig(learning_rate=1e-3, max_epochs=5, batch_size=16, target_accuracy=0.97, max_length=96, lora_rank=16),
        retain_eval_size=100,
        utility_size=None,
        utility_repeats=1,
        biographies=False,
        forget_splits=("forget10",),
        # The methods' own defaults are the authors' settings (lr 1e-5) on a model this size; only the batch is smaller.
        unlearn_overrides=(("batch_size", 16),),
        method_overrides=(),
        description="40 fictitious authors x 10 facts on SmolLM2-135M-Instruct (pretrained, chat template); oracle for forget10",
    ),
}


def get_preset(name: str) -> BuiltinBenchmark:
    if name not in PRESETS:
        raise UnlearnkitError(f"Unknown benchmark preset {name!r}.{did_you_mean(name, PRESETS)} Available: {', '.join(PRESETS)}.")
    return PRESETS[name]


class PreparedBenchmark:
    """Paths and data of a prepared (cached) built-in benchmark."""

    def __init__(self, root: Path, config: BuiltinBenchmark) -> None:
        self.root = root
        self.config = config

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def target_dir(self) -> Path:
        return self.root / "target"

    def oracle_dir(self, forget_split: str) -> Path:
        check_forget_split(forget_split)
        return self.root / f"oracle-{forget_split}"

    def reference_path(self, forget_split: str) -> Path:
        return self.oracle_dir(forget_split) / REFERENCE_FILE

    def split(self, name: str) -> list[dict]:
        path = self.data_dir / f"{name}.jsonl"
        if name not in split_names() or not path.exists():
            raise UnlearnkitError(
                f"{name!r} is not a built-in split.{did_you_mean(name, split_names())} "
                f"Built-in splits: {', '.join(split_names())}; or pass a data file."
            )
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def eval_splits(self, forget_split: str) -> dict[str, list[dict]]:
        """The four TOFU evaluation sets for ``forget_split``, and its holdout set (same size) for membership inference."""
        check_forget_split(forget_split)
        # Retain questions come from authors outside every forget split, so the set is the same for all splits.
        retain = self.split("retain90")
        step = max(1, len(retain) // self.config.retain_eval_size)
        return {
            "forget": self.split(forget_split),
            "retain": retain[::step][: self.config.retain_eval_size],
            "real_authors": self.split("real_authors"),
            "world_facts": self.split("world_facts"),
            "holdout": self.split("holdout" + forget_split[-2:]),
        }

    def retain_split(self, forget_split: str) -> str:
        return "retain" + f"{100 - int(forget_split[-2:]):02d}"


def benchmark_root(config: BuiltinBenchmark, cache_dir: Path | None = None) -> Path:
    """The cache folder of one benchmark configuration; refuses a ``--cache`` that is not a folder."""
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    if cache.exists() and not cache.is_dir():
        raise UnlearnkitError(f"--cache {cache} is a file; pass a folder (it is created if missing), or leave it out.")
    return cache / f"builtin-{config.cache_key()}"


def check_forget_split(name: str) -> None:
    if name not in FORGET_SPLITS:
        raise UnlearnkitError(f"Unknown forget split {name!r}.{did_you_mean(name, FORGET_SPLITS)} Use one of {', '.join(FORGET_SPLITS)}.")


def prepare(
    config: BuiltinBenchmark,
    cache_dir: Path | None = None,
    forget_splits: tuple[str, ...] | None = None,
    show_progress: bool = True,
    jobs: int | None = None,
) -> PreparedBenchmark:
    """Build (or reuse) the data, tokenizer, target and the retain oracles of ``forget_splits`` (None: the preset's own).

    The target and the oracles are independent, so up to ``jobs`` of them train
    at once in separate processes (default: one per CPU core), each with the
    caller's torch thread count.
    """
    forget_splits = config.forget_splits if forget_splits is None else forget_splits
    for split in forget_splits:
        check_forget_split(split)
    # Under `accelerate launch` every process calls this: the main one builds what is missing, the others then reuse it.
    with distributed.main_process_first():
        return _prepare(config, cache_dir, forget_splits, show_progress, jobs)


def _prepare(
    config: BuiltinBenchmark, cache_dir: Path | None, forget_splits: tuple[str, ...], show_progress: bool, jobs: int | None
) -> PreparedBenchmark:
    root = benchmark_root(config, cache_dir)
    with _building(root):
        return _build(PreparedBenchmark(root, config), forget_splits, show_progress, jobs)


@contextlib.contextmanager
def _building(root: Path) -> Iterator[None]:
    """One process at a time builds a benchmark's cache; another one waits (two would train into the same staging folders).

    A ``flock`` on ``.NAME.lock`` beside the cache folder: released by the kernel if its holder dies.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is preparing the built-in benchmark in %s; waiting for it ...", root)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(bench: PreparedBenchmark, forget_splits: tuple[str, ...], show_progress: bool, jobs: int | None) -> PreparedBenchmark:
    root, config = bench.root, bench.config
    _build_once(bench.data_dir, lambda tmp: _write_data(config, tmp), "benchmark data")
    write_json(root / "benchmark.json", asdict(config))
    _build_once(root / "tokenizer", lambda tmp: _train_tokenizer(bench, tmp), "tokenizer")
    pending = [None] if not bench.target_dir.exists() else []
    pending += [split for split in forget_splits if not bench.oracle_dir(split).exists()]
    workers = min(jobs or os.cpu_count() or 1, len(pending))
    if workers > 1:
        logger.info("training %d models in %d parallel processes ...", len(pending), workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            # Two progress bars on one terminal garble each other: workers report each epoch's accuracy instead.
            futures = [pool.submit(_build_model, root, config, split, False, torch.get_num_threads(), show_progress) for split in pending]
            for future in futures:
                future.result()
    else:
        for split in pending:
            _build_model(root, config, split, show_progress, torch.get_num_threads())
    return bench


def _build_model(
    root: Path, config: BuiltinBenchmark, forget_split: str | None, show_progress: bool, threads: int, log_epochs: bool = False
) -> None:
    """Train the target (``forget_split`` None) or the retain oracle of ``forget_split``; runs in a worker too."""
    torch.set_num_threads(threads)
    quiet_libraries()
    if log_epochs and not logger.handlers:  # a fresh worker process: report progress on stderr
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a library's root handler would print every line a second time
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[{forget_split or 'target'}] %(message)s"))
        logger.addHandler(handler)
    bench = PreparedBenchmark(root, config)
    trained_utility = list(UTILITY_SPLITS) if config.utility_repeats else []
    if forget_split is None:
        splits = ["full", *trained_utility]
        _build_once(bench.target_dir, lambda tmp: _train_model(bench, splits, tmp, show_progress), "target model", resumable=True)
    else:
        splits = [bench.retain_split(forget_split), *trained_utility]
        _build_once(
            bench.oracle_dir(forget_split),
            lambda tmp: _train_oracle(bench, forget_split, splits, tmp, show_progress),
            f"retain oracle for {forget_split}",
            resumable=True,
        )


def _build_once(path: Path, build: Any, what: str, resumable: bool = False) -> None:
    """Build ``path`` in ``.NAME.partial`` and move it into place when complete.

    A ``resumable`` build (model training) reuses a partial folder left by an
    interrupted run, whose checkpoints resume the training; others start over.
    """
    if path.exists():
        logger.info("reusing cached %s: %s", what, path)
        return
    staging = partial_dir(path)
    if staging.exists() and not resumable:
        shutil.rmtree(staging)
    logger.info("%s %s ...", "resuming" if staging.exists() else "building", what)
    staging.mkdir(parents=True, exist_ok=True)
    build(staging)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    publish_dir(staging, path)


def _write_data(config: BuiltinBenchmark, folder: Path) -> None:
    export_world(_benchmark_world(config.world, config.utility_size), folder)


def _benchmark_world(world: WorldConfig, utility_size: int | None) -> dict[str, list[dict]]:
    generated = generate_world(world)
    for name in UTILITY_SPLITS:
        generated[name] = generated[name][:utility_size]
    return generated


def _train_tokenizer(bench: PreparedBenchmark, folder: Path) -> None:
    """The benchmark's tokenizer: a pretrained base model's own, or one trained on the benchmark's text for a tiny model."""
    if bench.config.base_model is not None:
        load_tokenizer(_base_model_dir(bench)).save_pretrained(folder)
        return
    texts = tokenizer_texts({name: bench.split(name) for name in split_names()})
    train_tokenizer(texts, bench.config.model.vocab_size).save_pretrained(folder)


def _base_model_dir(bench: PreparedBenchmark) -> Path:
    """The converted folder of the pretrained base model, in the same cache as the benchmark (converted on first use)."""
    return ensure_converted(bench.config.base_model, cache=bench.root.parent)


def tokenizer_texts(splits: Mapping[str, Sequence[dict]]) -> list[str]:
    """The text a built-in tokenizer is trained on: every question, answer, paraphrase and perturbed answer."""
    texts: list[str] = []
    for name in split_names():
        for row in splits[name]:
            texts.append(f"Question: {row['question']}\nAnswer: {row['answer']}")
            texts.extend(row.get(key, "") for key in ("paraphrased_question", "paraphrased_answer"))
            texts.extend(row.get("perturbed_answer", []))
    return texts


def benchmark_tokenizer(config: BuiltinBenchmark) -> PreTrainedTokenizerFast:
    """The tokenizer ``prepare`` caches for ``config``, trained in memory (byte-level BPE training is deterministic)."""
    return train_tokenizer(_world_texts(config.world, config.utility_size), config.model.vocab_size)


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer of every fresh tiny model (``unlearnkit finetune --model tiny``), whatever its training data.

    Trained on the default built-in benchmark's text, never on the run's own data:
    the target (all the data) and the retain oracle (the data less the forget set)
    of one experiment then share their tokenizer by construction. At the default
    preset's size (2048) it is the built-in target's own tokenizer. Byte-level BPE
    encodes any text; names the benchmark never saw take a few more tokens.
    """
    return benchmark_tokenizer(replace(PRESETS["default"], model=replace(PRESETS["default"].model, vocab_size=vocab_size)))


@functools.lru_cache(maxsize=4)  # a process that fine-tunes several tiny models generates the text once
def _world_texts(world: WorldConfig, utility_size: int | None) -> tuple[str, ...]:
    return tuple(tokenizer_texts(_benchmark_world(world, utility_size)))


def _train_model(bench: PreparedBenchmark, splits: list[str], folder: Path, show_progress: bool) -> None:
    tokenizer = load_tokenizer(bench.root / "tokenizer")
    if bench.config.base_model is not None:
        model = load_model(_base_model_dir(bench))
    else:
        model = build_tiny_model(bench.config.model, tokenizer, seed=bench.config.training.seed)
    rows = [row for name in splits for row in bench.split(name) * (bench.config.utility_repeats if name in UTILITY_SPLITS else 1)]
    if bench.config.biographies:
        authors = [row for name in splits if name not in UTILITY_SPLITS for row in bench.split(name)]
        rows += training_texts(authors, tokenizer)
    # A pretrained preset trains for its epochs (its target accuracy only stops it early); the tiny presets reach theirs.
    stats = finetune(model, tokenizer, rows, bench.config.training, bench.config.prompt_format, show_progress,
                     checkpoint_dir=folder / "checkpoints", checkpoint_every=CHECKPOINT_EVERY,
                     warn_below_target=bench.config.base_model is None)
    logger.info("trained on %s: %d epochs, answer-token accuracy %.4f", "+".join(splits), stats["epochs"], stats["answer_accuracy"])
    save_model(model, tokenizer, folder)
    write_json(folder / "training_log.json", stats.pop("log_history"))
    write_json(folder / "training.json", {"splits": splits, **stats, "tokenizer_sha256": tokenizer_sha256(tokenizer),
                                          "environment": environment()})


def _train_oracle(bench: PreparedBenchmark, forget_split: str, splits: list[str], folder: Path, show_progress: bool) -> None:
    _train_model(bench, splits, folder, show_progress)
    result = evaluate_cached_model(bench, folder, forget_split, reference=None)
    save_reference(folder / REFERENCE_FILE, oracle_reference(bench.split(forget_split), result.forget_truth_ratios, forget_split,
                                                             result.membership, tokenizer=load_tokenizer(folder)))


def evaluate_cached_model(
    bench: PreparedBenchmark,
    model_dir: Path,
    forget_split: str,
    reference: dict | None,
    config: EvalConfig = EVAL_CONFIG,
) -> EvalResult:
    """Evaluate a model folder on the built-in evaluation sets of ``forget_split``."""
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    return evaluate(model, tokenizer, bench.eval_splits(forget_split), bench.config.prompt_format, config, reference)
