"""Loaders for the TOFU and MUSE dataset schemas, from the hub by name or from local files.

Accepted names (``@DIR`` reads a local copy instead of the hub):

* ``tofu:CONFIG[@DIR]`` — TOFU (``locuslab/TOFU`` on the hub, split ``train``).
  Configs: ``full``, ``forget01/05/10``, ``retain90/95/99`` and ``holdout01/05/10``
  (fields ``question``, ``answer``); ``forget01/05/10_perturbed`` and
  ``retain_perturbed`` (also ``paraphrased_answer``, ``perturbed_answer``, a list,
  and ``paraphrased_question``, which is kept but not required);
  ``real_authors``/``world_facts`` (``question``, ``answer``) and their
  ``_perturbed`` forms (also ``perturbed_answer``; on these the answer itself is
  the correct option). ``DIR`` holds ``CONFIG.json`` (the hub's files are JSON
  Lines under a ``.json`` name; a JSON list is read too), ``CONFIG.jsonl`` or
  ``CONFIG.parquet``.
* ``muse-news:SUBSET/SPLIT[@DIR]`` and ``muse-books:SUBSET/SPLIT[@DIR]`` — MUSE
  (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``). Subsets and splits:
  ``raw`` (``forget``, ``retain1``, ``retain2``, ``holdout``; field ``text``),
  ``verbmem`` (``forget``; fields ``prompt`` and ``gt``, the true continuation),
  ``knowmem`` (``forget_qa``, ``retain_qa``, ``forget_qa_icl``, ``retain_qa_icl``;
  fields ``question``, ``answer``), ``privleak`` (``forget``, ``retain``,
  ``holdout``; field ``text``), ``scal`` (``forget_1`` … ``forget_4``, nested:
  each holds the previous) and ``sust`` (``forget_1`` … ``forget_4``, disjoint),
  both with field ``text``. A subset with one split may omit it
  (``muse-news:verbmem``). ``DIR`` holds ``SUBSET/SPLIT.json`` (the MUSE
  repository's layout: a JSON list), ``.jsonl``, ``.parquet``, ``.txt`` (one
  document) or the hub's ``SUBSET/SPLIT-*.parquet`` shards.

Unsure parts of the MUSE schema, hence configurable (``fields`` maps our name
to the file's): the hub card lists a ``train`` subset whose layout we have not
checked (not offered here), and ``privleak``/``scal``/``sust`` are read with the
field ``text`` as in ``raw``. The ``retain_qa_icl`` split name is the hub's; the
original repository calls its files ``retain2_qa*.json``.

Each QA subset carries its benchmark's generation cap (:func:`max_new_tokens`):
TOFU 200 new tokens (OpenUnlearning's configs/generation/default.yaml at d3d7cf9;
TOFU's own config/eval_everything.yaml caps prompt and answer together at
max_length 200), MUSE ``knowmem`` 32 (MUSE eval.py, ``knowmem_max_new_tokens``).

Rows come back in unlearnkit's internal form: QA rows (``question``,
``answer``, and the truth-ratio fields when present) for TOFU and MUSE's
``knowmem``; ``{"prompt", "gt"}`` for ``verbmem``; ``{"text"}`` for the text
subsets. Every missing field raises :class:`UnlearnkitError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from unlearnkit.errors import UnlearnkitError, did_you_mean

QA, TEXT, CONTINUATION = "qa", "text", "continuation"
TRUTH_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
# Greedy tokens generated per question (see the module docstring).
TOFU_MAX_NEW_TOKENS = 200
MUSE_KNOWMEM_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Subset:
    """A config of a hub dataset: what its rows are, the fields they need, and its splits."""

    kind: str
    fields: tuple[str, ...]
    splits: tuple[str, ...] = ("train",)
    max_new_tokens: int | None = None  # a QA subset's generation cap, from its benchmark's evaluation code


@dataclass(frozen=True)
class Benchmark:
    hub_name: str
    subsets: Mapping[str, Subset]


_TOFU_QA = Subset(QA, ("question", "answer"), max_new_tokens=TOFU_MAX_NEW_TOKENS)
_TOFU_TRUTH = Subset(QA, TRUTH_FIELDS, max_new_tokens=TOFU_MAX_NEW_TOKENS)
_TOFU_FACTS_TRUTH = Subset(QA, ("question", "answer", "perturbed_answer"), max_new_tokens=TOFU_MAX_NEW_TOKENS)
TOFU_SUBSETS: dict[str, Subset] = {
    "full": _TOFU_QA,
    **{f"forget{p:02d}": _TOFU_QA for p in (1, 5, 10)},
    **{f"retain{100 - p}": _TOFU_QA for p in (1, 5, 10)},
    **{f"holdout{p:02d}": _TOFU_QA for p in (1, 5, 10)},
    **{f"forget{p:02d}_perturbed": _TOFU_TRUTH for p in (1, 5, 10)},
    "retain_perturbed": _TOFU_TRUTH,
    "real_authors": _TOFU_QA,
    "world_facts": _TOFU_QA,
    "real_authors_perturbed": _TOFU_FACTS_TRUTH,
    "world_facts_perturbed": _TOFU_FACTS_TRUTH,
}

_MUSE_FORGET_SETS = tuple(f"forget_{i}" for i in range(1, 5))
MUSE_SUBSETS: dict[str, Subset] = {
    "raw": Subset(TEXT, ("text",), ("forget", "retain1", "retain2", "holdout")),
    "verbmem": Subset(CONTINUATION, ("prompt", "gt"), ("forget",)),
    "knowmem": Subset(QA, ("question", "answer"), ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl"),
                      MUSE_KNOWMEM_MAX_NEW_TOKENS),
    "privleak": Subset(TEXT, ("text",), ("forget", "retain", "holdout")),
    "scal": Subset(TEXT, ("text",), _MUSE_FORGET_SETS),
    "sust": Subset(TEXT, ("text",), _MUSE_FORGET_SETS),
}

BENCHMARKS: dict[str, Benchmark] = {
    "tofu": Benchmark("locuslab/TOFU", TOFU_SUBSETS),
    "muse-news": Benchmark("muse-bench/MUSE-News", MUSE_SUBSETS),
    "muse-books": Benchmark("muse-bench/MUSE-Books", MUSE_SUBSETS),
}
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt")


@dataclass(frozen=True)
class SchemaSource:
    """A parsed name: benchmark, subset (config), split and an optional local folder."""

    benchmark: str
    subset: str
    split: str
    local_dir: Path | None = None

    @property
    def spec(self) -> Subset:
        return BENCHMARKS[self.benchmark].subsets[self.subset]

    def __str__(self) -> str:
        split = "" if self.benchmark == "tofu" else f"/{self.split}"
        local = f"@{self.local_dir}" if self.local_dir else ""
        return f"{self.benchmark}:{self.subset}{split}{local}"


def is_schema_source(text: str) -> bool:
    """True for names of the form ``tofu:...``, ``muse-news:...`` or ``muse-books:...``."""
    prefix, sep, _ = str(text).partition(":")
    return bool(sep) and prefix in BENCHMARKS


def parse_source(text: str) -> SchemaSource:
    """Parse ``BENCHMARK:SUBSET[/SPLIT][@DIR]``, refusing unknown benchmarks, subsets and splits by name."""
    prefix, sep, rest = str(text).partition(":")
    if not sep or prefix not in BENCHMARKS:
        raise UnlearnkitError(f"{text!r} is not a TOFU/MUSE name; use one of {', '.join(f'{b}:...' for b in BENCHMARKS)}.")
    name, at, folder = rest.partition("@")
    subset, slash, split = name.partition("/")
    subsets = BENCHMARKS[prefix].subsets
    if subset not in subsets:
        raise UnlearnkitError(f"{prefix} has no subset {subset!r}.{did_you_mean(subset, subsets)} Subsets: {', '.join(subsets)}.")
    spec = subsets[subset]
    if prefix == "tofu":
        if slash:
            raise UnlearnkitError(f"TOFU names have no split (its only split is 'train'): write tofu:{subset}.")
        split = "train"
    elif not slash:
        if len(spec.splits) != 1:
            raise UnlearnkitError(f"{prefix}:{subset} has several splits; "
                                  f"name one: {', '.join(f'{prefix}:{subset}/{s}' for s in spec.splits)}.")
        split = spec.splits[0]
    if split not in spec.splits:
        raise UnlearnkitError(f"{prefix}:{subset} has no split {split!r}.{did_you_mean(split, spec.splits)} "
                              f"Splits: {', '.join(spec.splits)}.")
    if at and not folder:
        raise UnlearnkitError(f"{text!r}: '@' must be followed by the folder holding the files.")
    return SchemaSource(prefix, subset, split, Path(folder) if at else None)


def max_new_tokens(source: str) -> int | None:
    """The generation cap of a TOFU/MUSE QA source (see the module docstring); None for a subset that is not QA."""
    return parse_source(source).spec.max_new_tokens


def load_rows(source: str | SchemaSource, fields: Mapping[str, str] | None = None) -> list[dict]:
    """Rows of a TOFU/MUSE source in unlearnkit's form (see the module docstring).

    ``fields`` maps an internal field name to the name the files use (e.g.
    ``{"gt": "continuation"}``), for copies whose field names differ.
    """
    parsed = parse_source(source) if isinstance(source, str) else source
    raw = _read_local(parsed) if parsed.local_dir is not None else _read_hub(parsed)
    return to_internal(raw, parsed.spec, fields or {}, where=str(parsed))


def load_qa_rows(source: str, role: str) -> list[dict]:
    """QA rows (``question``, ``answer``, ...) of a TOFU or MUSE ``knowmem`` source; other subsets are refused."""
    parsed = parse_source(source)
    if parsed.spec.kind != QA:
        raise UnlearnkitError(
            f"The {role} data {source} holds {parsed.spec.kind} rows ({', '.join(parsed.spec.fields)}), not question-answer "
            "pairs. Use a QA source (tofu:..., muse-...:knowmem/...) here; MUSE texts feed `unlearnkit sequence --muse`."
        )
    return load_rows(parsed)


def load_texts(source: str | SchemaSource, fields: Mapping[str, str] | None = None) -> list[str]:
    """The ``text`` of every row of a MUSE text subset (``raw``, ``privleak``, ``scal``, ``sust``)."""
    parsed = parse_source(source) if isinstance(source, str) else source
    if parsed.spec.kind != TEXT:
        raise UnlearnkitError(f"{parsed} holds {parsed.spec.kind} rows, not texts; use a raw/privleak/scal/sust split.")
    return [row["text"] for row in load_rows(parsed, fields)]


def to_internal(rows: list[dict], spec: Subset, fields: Mapping[str, str], where: str) -> list[dict]:
    """Check every required field (by the files' name) and rename the files' fields to ours."""
    unknown = set(fields) - set(spec.fields)
    if unknown:
        raise UnlearnkitError(f"Field mapping for {where} names unknown field(s) {sorted(unknown)}; "
                              f"its fields are {', '.join(spec.fields)}.")
    if not rows:
        raise UnlearnkitError(f"{where} is empty: "
                              f"it needs at least one row with fields {', '.join(fields.get(f, f) for f in spec.fields)}.")
    converted = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of {where} is a {type(row).__name__}, not an object with fields.")
        out = {key: value for key, value in row.items() if key not in fields.values()}
        for name in spec.fields:
            source_name = fields.get(name, name)
            if source_name not in row:
                present = ", ".join(sorted(map(str, row))) or "none"
                raise UnlearnkitError(f"Row {index} of {where} has no field {source_name!r} (fields present: {present}).")
            value = row[source_name]
            if value is None:
                raise UnlearnkitError(f"Row {index} of {where}: field {source_name!r} is null (empty); every row needs a value for it.")
            if name == "perturbed_answer":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise UnlearnkitError(f"Row {index} of {where}: field {source_name!r} must be a non-empty list of strings.")
            elif not isinstance(value, str) or not value.strip():
                raise UnlearnkitError(f"Row {index} of {where}: field {source_name!r} must be a non-empty string.")
            out[name] = value
        converted.append(out)
    return converted


def _read_hub(source: SchemaSource) -> list[dict]:
    from datasets import load_dataset

    name = BENCHMARKS[source.benchmark].hub_name
    try:
        dataset = load_dataset(name, source.subset, split=source.split)
    except Exception as error:  # noqa: BLE001 - the hub raises many types; all mean the same to the user
        raise UnlearnkitError(f"Could not load {source} ({name}, config {source.subset}, split {source.split}) "
                              f"from the hub: {error}") from None
    return [dict(row) for row in dataset]


def local_files(source: SchemaSource) -> list[Path]:
    """The file of ``source`` in its local folder, or its Parquet shards; raises naming what was looked for."""
    folder = Path(source.local_dir or ".")
    stem = folder / source.subset if source.benchmark == "tofu" else folder / source.subset / source.split
    candidates = [stem.with_name(stem.name + suffix) for suffix in LOCAL_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return [path]
    shards = sorted(stem.parent.glob(f"{stem.name}-*.parquet"))  # the hub's shard names: SPLIT-00000-of-00001.parquet
    if not shards:
        raise UnlearnkitError(
            f"No file for {source} in {folder}: looked for {', '.join(p.name for p in candidates)} "
            f"and {stem.name}-*.parquet in {stem.parent}."
        )
    return shards


def _read_local(source: SchemaSource) -> list[dict]:
    rows: list[dict] = []
    for path in local_files(source):
        rows.extend(_read_file(path, source))
    return rows


def _read_file(path: Path, source: SchemaSource) -> list[dict]:
    from unlearnkit.data.catalog.reading import json_rows

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not parse {path} ({source}): {error}") from None
    if suffix == ".txt":
        return [{"text": text}]
    data = json_rows(text, path)  # TOFU's hub files are JSON Lines under a .json name
    if source.spec.kind == TEXT and all(isinstance(item, str) for item in data):
        return [{"text": item} for item in data]  # a JSON list of documents
    return data
