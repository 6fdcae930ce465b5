"""Real-knowledge unlearning data: probes of what a pretrained model knows, corpora to unlearn from, and utility texts.

The setting is that of "Who's Harry Potter" (Eldan & Russinovich, arXiv 2023),
RWKU (Jin et al., "RWKU: Benchmarking Real-World Knowledge Unlearning for Large
Language Models", NeurIPS Datasets and Benchmarks 2024) and WMDP: the knowledge
to remove was learnt in pretraining, so no model trained without it exists and
no retain oracle can be compared with. What is measured instead is the
trade-off between *forget* probes (facts about the target entities, which
should stop being answered) and *neighbour* probes (related entities, which must
keep being answered), plus general fluency.

A probe is one row, in one of three forms that share the fact's gold answer:

* ``qa``: ``question`` → the greedy answer must contain ``answer`` or one of ``aliases``;
* ``cloze``: ``text`` holds one blank ``___``; the greedy continuation of the
  text before the blank must contain the answer;
* ``mcq``: ``question`` and ``options`` (the answer among them); the option the
  model finds most likely must be the answer.

Every row also names its ``entity`` and its ``role`` ("forget" or "neighbour");
``id`` (the fact it asks) and ``target`` (for a neighbour: the forget entity it
stands next to) are optional. The shipped probes were selected from
``candidates.jsonl``, one row per fact with all three forms, by what
SmolLM2-135M-Instruct answers correctly before unlearning
(``benchmarks/select_real_knowledge.py``). A user brings their own entities as a
probes file of the same schema (:func:`load_probes` with a path).

Answers are compared after :func:`normalize_answer` (accents, case, punctuation
and articles removed), as whole words (:func:`contains_answer`): the functions
live here, with the schema they define, and the metrics reuse them.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from unlearnkit.data.anchors import load_anchored_terms
from unlearnkit.errors import UnlearnkitError, did_you_mean

logger = logging.getLogger("unlearnkit")

ROLES = ("forget", "neighbour")
FORMS = ("qa", "cloze", "mcq")
BLANK = "___"
# The field holding each form's prompt text.
PROMPT_FIELD = {"qa": "question", "cloze": "text", "mcq": "question"}
# Fields a probe row may hold; any other field is kept but not read.
PROBE_TEXT_FIELDS = ("entity", "role", "form", "answer", "question", "text", "id", "target")
CANDIDATE_FIELDS = ("id", "entity", "role", "question", "answer", "cloze", "options")
ARTICLES = frozenset({"a", "an", "the"})

RESOURCE_DIR = "real_knowledge"
PROBES_FILE = "probes-smollm2-135m.jsonl"
CANDIDATES_FILE = "candidates.jsonl"
SELECTION_FILE = "selection-smollm2-135m.json"
CORPUS_FILES = {"forget": "forget_corpus.jsonl", "neighbour": "retain_corpus.jsonl"}
GENERAL_TEXT_FILE = "general_text.txt"
GENERATION_PROMPTS_FILE = "generation_prompts.txt"
WHP_ANCHORS_FILE = "whp_anchors.json"

_NOT_WORD = re.compile(r"[\W_]+")


# --- Answers ----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """``text`` as answers are compared: accents stripped, lower case, punctuation as spaces, no articles, single spaces.

    "Notre-Dame", "notre dame" and "Notre Dame." become one string, as do
    "Marić" and "Maric": a model is not judged on spelling or punctuation.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(character for character in decomposed if not unicodedata.combining(character))
    return " ".join(word for word in _NOT_WORD.sub(" ", plain.lower()).split() if word not in ARTICLES)


def answer_variants(answer: str, aliases: Iterable[str] = ()) -> list[str]:
    """The distinct non-empty normalised forms of the answer and its aliases, in order."""
    return [variant for variant in dict.fromkeys(normalize_answer(text) for text in (answer, *aliases)) if variant]


def contains_answer(prediction: str, answer: str, aliases: Iterable[str] = ()) -> bool:
    """Whether ``prediction`` holds the answer or an alias as whole words, after :func:`normalize_answer`.

    Whole words, so that "Paris" is not found in "Parisian" nor "Io" in "radio".
    """
    padded = f" {normalize_answer(prediction)} "
    return any(f" {variant} " in padded for variant in answer_variants(answer, aliases))


def forms_by_fact(probes: list[dict]) -> dict[str, dict[str, dict]]:
    """Probe id -> form -> the first probe of that fact in that form."""
    forms: dict[str, dict[str, dict]] = {}
    for probe in probes:
        forms.setdefault(probe["id"], {}).setdefault(probe["form"], probe)
    return forms


def editable_facts(probes: list[dict], count: int) -> list[dict]:
    """Up to ``count`` forget qa probes whose question names their entity and whose fact also has a cloze and an mcq
    form, taken in turn per entity, in file order (the facts a subject-keyed editor can be measured on)."""
    forms = forms_by_fact(probes)
    queues: dict[str, list[dict]] = {}
    for probe in probes:
        named = probe["form"] == "qa" and probe["entity"] in probe.get("question", "")
        if probe["role"] == "forget" and named and {"cloze", "mcq"} <= set(forms[probe["id"]]):
            queues.setdefault(probe["entity"], []).append(probe)
    chosen: list[dict] = []
    while len(chosen) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def cloze_prefix(text: str) -> str:
    """The text before the blank of a cloze probe, trailing whitespace removed (the answer's first token brings its space)."""
    if text.count(BLANK) != 1:
        raise UnlearnkitError(f"A cloze text needs exactly one blank {BLANK!r}; {text!r} has {text.count(BLANK)}.")
    return text.split(BLANK, 1)[0].rstrip()


def probe_prompt(probe: Mapping[str, Any]) -> str:
    """What the model is shown for ``probe``: its question, or for a cloze the text before the blank."""
    return cloze_prefix(probe["text"]) if probe["form"] == "cloze" else probe["question"]


# --- Validation -------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_probe(row: Any, where: str) -> dict[str, Any]:
    """One probe row, checked; returned with ``aliases`` filled in (an empty list when absent)."""
    if not isinstance(row, dict):
        raise UnlearnkitError(f"{where} is a {type(row).__name__}, not an object with fields.")
    form = row.get("form")
    if form not in FORMS:
        raise UnlearnkitError(f"{where}: field 'form' must be one of {', '.join(FORMS)}, got {form!r}.")
    prompt_field = PROMPT_FIELD[form]
    for name in ("entity", "role", "answer", prompt_field):
        if name not in row:
            raise UnlearnkitError(f"{where} has no field {name!r}; a {form} probe needs entity, role, form, answer and {prompt_field}.")
    for name in PROBE_TEXT_FIELDS:
        if name in row and not _is_text(row[name]):
            raise UnlearnkitError(f"{where}: field {name!r} must be a non-empty string, got {row[name]!r}.")
    if row["role"] not in ROLES:
        raise UnlearnkitError(f"{where}: field 'role' must be one of {', '.join(ROLES)}, got {row['role']!r}.")
    other_prompt = "question" if form == "cloze" else "text"
    if other_prompt in row:
        raise UnlearnkitError(f"{where}: a {form} probe has a {prompt_field!r}, not a {other_prompt!r}.")
    if "options" in row and form != "mcq":
        raise UnlearnkitError(f"{where}: only mcq probes have 'options' (this one is {form}); set form to mcq or drop them.")
    aliases = row.get("aliases", [])
    if not isinstance(aliases, list) or not all(_is_text(alias) for alias in aliases):
        raise UnlearnkitError(f"{where}: field 'aliases' must be a list of non-empty strings, got {aliases!r}.")
    if not answer_variants(row["answer"]):
        raise UnlearnkitError(f"{where}: the answer {row['answer']!r} has no letters or digits to match.")
    if form == "cloze":
        if row["text"].count(BLANK) != 1:
            raise UnlearnkitError(f"{where}: a cloze text needs exactly one blank {BLANK!r}, got {row['text']!r}.")
        if not cloze_prefix(row["text"]).strip():
            raise UnlearnkitError(f"{where}: the cloze text {row['text']!r} has nothing before the blank to continue.")
    if form == "mcq":
        _check_options(row, where)
    prompt = probe_prompt(row)
    if contains_answer(prompt, row["answer"], aliases):
        raise UnlearnkitError(f"{where}: the {prompt_field} {prompt!r} already contains the answer {row['answer']!r} (or an "
                              "alias), so any model that repeats it would count as knowing the fact. Reword it.")
    return {**row, "aliases": list(aliases)}


def _check_options(row: Mapping[str, Any], where: str) -> None:
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(_is_text(option) for option in options):
        raise UnlearnkitError(f"{where}: an mcq probe needs 'options', a list of at least two non-empty strings, got {options!r}.")
    if len(set(options)) != len(options):
        raise UnlearnkitError(f"{where}: the options {options!r} repeat one; each must be different.")
    if options.count(row["answer"]) != 1:
        raise UnlearnkitError(f"{where}: the answer {row['answer']!r} is not one of the options {options!r}; "
                              "an mcq probe's answer must be exactly one of them.")


def probe_key(probe: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """What makes two probes the same: role, form, prompt text and answer."""
    return probe["role"], probe["form"], probe[PROMPT_FIELD[probe["form"]]], probe["answer"]


def validate_probes(rows: Sequence[Any], where: str) -> list[dict[str, Any]]:
    """Check every probe row (:func:`_check_probe`), refuse an empty set and repeated probes; rows with ``aliases`` filled.

    A set with no neighbour (or no forget) probes loads, with a warning: its
    accuracies on the missing side are NaN, and the trade-off cannot be read.
    """
    if len(rows) == 0:
        raise UnlearnkitError(f"The {where} holds no probes; it needs at least one row with entity, role, form, answer and "
                              "a question (qa, mcq) or a text with a blank (cloze).")
    checked = [_check_probe(row, f"Row {index} of the {where}") for index, row in enumerate(rows, start=1)]
    counts = Counter(probe_key(probe) for probe in checked)
    repeated = [key for key, count in counts.items() if count > 1]
    if repeated:
        role, form, prompt, _ = repeated[0]
        raise UnlearnkitError(f"The {where} repeats a probe ({len(repeated)} repeated in all), e.g. the {role} {form} probe {prompt!r}: "
                              "a repeated probe counts twice in every accuracy. Drop the copies.")
    for role in ROLES:
        if not any(probe["role"] == role for probe in checked):
            logger.warning("The %s has no %s probes: its %s accuracies will be NaN.", where, role, role)
    return checked


def validate_candidates(rows: Sequence[Any], where: str) -> list[dict[str, Any]]:
    """Check a candidate pool: one row per fact with every form's fields, unique ``id``s, each form a valid probe."""
    if len(rows) == 0:
        raise UnlearnkitError(f"The {where} holds no candidate facts.")
    keys: Counter = Counter()
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of the {where} is a {type(row).__name__}, not an object with fields.")
        missing = [name for name in CANDIDATE_FIELDS if name not in row]
        if missing:
            raise UnlearnkitError(f"Row {index} of the {where} has no field {missing[0]!r}; a candidate fact needs "
                                  f"{', '.join(CANDIDATE_FIELDS)} (aliases and target are optional).")
        for probe in candidate_probes([row]):
            keys[probe_key(_check_probe(probe, f"Row {index} of the {where} ({probe['form']} form)"))] += 1
    repeated = [name for name, count in Counter(row["id"] for row in rows).items() if count > 1]
    if repeated:
        raise UnlearnkitError(f"The {where} uses the id {repeated[0]!r} for more than one fact; ids must be unique.")
    twice = [key for key, count in keys.items() if count > 1]
    if twice:
        raise UnlearnkitError(f"The {where} asks the {twice[0][1]} probe {twice[0][2]!r} in more than one fact; drop the copy.")
    return [dict(row) for row in rows]


# --- Candidates -> probes ---------------------------------------------------------------


def candidate_probes(facts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each candidate fact as its three probe rows (qa, cloze, mcq), in fact order, then form order."""
    probes = []
    for fact in facts:
        shared = {"id": fact["id"], "entity": fact["entity"], "role": fact["role"]}
        if "target" in fact:
            shared["target"] = fact["target"]
        answer = {"answer": fact["answer"], "aliases": _copied(fact.get("aliases", []))}
        probes.append({**shared, "form": "qa", "question": fact["question"], **answer})
        probes.append({**shared, "form": "cloze", "text": fact["cloze"], **answer})
        probes.append({**shared, "form": "mcq", "question": fact["question"], **answer, "options": _copied(fact["options"])})
    return probes


def _copied(value: Any) -> Any:
    """A copy of a list (so probes never share one with their fact); anything else as is, for validation to refuse."""
    return list(value) if isinstance(value, list) else value


def forget_targets(probes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The forget entities of a probe set, in the order they first appear."""
    return list(dict.fromkeys(probe["entity"] for probe in probes if probe["role"] == "forget"))


def probes_for_target(probes: Sequence[Mapping[str, Any]], target: str) -> list[dict[str, Any]]:
    """The probes of a run that unlearns one forget entity: its probes stay forget, every other probe becomes a neighbour.

    The shipped set has several forget targets; a method that unlearns only one
    of them must keep the others, so their probes count as neighbours there.
    """
    return probes_for_targets(probes, [target])


def probes_for_targets(probes: Sequence[Mapping[str, Any]], targets: Sequence[str]) -> list[dict[str, Any]]:
    """The probes of a run that unlearns some of the forget entities: theirs stay forget, every other probe is a neighbour."""
    known = forget_targets(probes)
    for target in targets:
        if target not in known:
            raise UnlearnkitError(f"No forget probes about {target!r}; the forget entities are: {', '.join(known) or 'none'}."
                                  + did_you_mean(target, known))
    chosen = set(targets)
    return [{**probe, "role": "forget" if probe["role"] == "forget" and probe["entity"] in chosen else "neighbour"} for probe in probes]


def parse_targets(text: str, option: str = "--targets") -> list[str]:
    """``--targets`` (or the ``option`` named in messages): comma-separated forget entities, each once (``"Albert Einstein,Paris"``)."""
    targets = [part.strip() for part in str(text).split(",")]
    if not text or not all(targets):
        raise UnlearnkitError(f"{option} takes comma-separated forget entities, e.g. 'Albert Einstein,Paris'; got {text!r}.")
    repeated = sorted({target for target in targets if targets.count(target) > 1})
    if repeated:
        raise UnlearnkitError(f"{option} names {', '.join(repeated)} more than once.")
    return targets


# --- Files ------------------------------------------------------------------------------


def resource_file(name: str) -> Path:
    """The path of a shipped file of the real-knowledge benchmark."""
    return Path(str(resources.files("unlearnkit.data").joinpath("resources", RESOURCE_DIR, name)))


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnlearnkitError(f"The {what} file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"The {what} file {str(path)!r} cannot be read as UTF-8 text: {error}.") from None


def read_jsonl(path: str | Path, what: str) -> list[Any]:
    """The JSON value of each non-blank line of ``path``; a line that is not JSON is an error naming it."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UnlearnkitError(f"Line {number} of the {what} file {str(path)!r} is not valid JSON ({error.msg}).") from None
    return rows


def load_probes(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Probe rows, validated: the shipped SmolLM2-135M-Instruct selection, or a user's JSONL file of the same schema."""
    source = resource_file(PROBES_FILE) if path is None else Path(path)
    return validate_probes(read_jsonl(source, "probes"), f"probes file {str(source)!r}")


def load_candidates(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The candidate facts (one row per fact, every form), validated: the shipped pool or a user's file."""
    source = resource_file(CANDIDATES_FILE) if path is None else Path(path)
    return validate_candidates(read_jsonl(source, "candidates"), f"candidates file {str(source)!r}")


def load_corpus(role: str, path: str | Path | None = None) -> list[dict[str, str]]:
    """Passages ``{"entity", "text"}`` about the forget entities (``role="forget"``) or their neighbours (``"neighbour"``).

    They are what an unlearning method trains on (forget) or keeps (neighbour),
    written apart from the probes, so that a method cannot pass by memorising
    the test questions.
    """
    if role not in CORPUS_FILES:
        raise UnlearnkitError(f"A corpus is for role forget or neighbour, got {role!r}.")
    source = resource_file(CORPUS_FILES[role]) if path is None else Path(path)
    where = f"{role} corpus {str(source)!r}"
    rows = read_jsonl(source, f"{role} corpus")
    if not rows:
        raise UnlearnkitError(f"The {where} holds no passages; it needs rows {{\"entity\": ..., \"text\": ...}}.")
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of the {where} is a {type(row).__name__}, not an object with fields.")
        for name in ("entity", "text"):
            if not _is_text(row.get(name)):
                raise UnlearnkitError(f"Row {index} of the {where}: field {name!r} must be a non-empty string, got {row.get(name)!r}.")
    return [{"entity": row["entity"], "text": row["text"]} for row in rows]


def corpus_training_rows(passages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Passages as the ``{"text"}`` rows training takes (loss on every token), in order."""
    return [{"text": passage["text"]} for passage in passages]


def load_general_text(path: str | Path | None = None) -> list[str]:
    """The general-English passages perplexity is measured on: the file's paragraphs (separated by blank lines)."""
    source = resource_file(GENERAL_TEXT_FILE) if path is None else Path(path)
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", _read_text(source, "general text"))]
    paragraphs = [paragraph for paragraph in paragraphs if paragraph]
    if not paragraphs:
        raise UnlearnkitError(f"The general text file {str(source)!r} is empty; it needs a few paragraphs of plain prose.")
    return paragraphs


def load_generation_prompts(path: str | Path | None = None) -> list[str]:
    """The open prompts of the fluency check: one per non-blank line."""
    source = resource_file(GENERATION_PROMPTS_FILE) if path is None else Path(path)
    prompts = [line.strip() for line in _read_text(source, "generation prompts").splitlines() if line.strip()]
    if not prompts:
        raise UnlearnkitError(f"The generation prompts file {str(source)!r} is empty; write one prompt per line.")
    return prompts


def load_whp_anchors(path: str | Path | None = None) -> dict[str, str]:
    """The Who's-Harry-Potter anchored terms for the forget entities (term → generic term), as the WHP method reads them."""
    return load_anchored_terms(resource_file(WHP_ANCHORS_FILE) if path is None else path)


def load_selection_record(path: str | Path | None = None) -> dict[str, Any]:
    """The record of how the shipped probes were selected (model, tokenizer fingerprint, counts)."""
    source = resource_file(SELECTION_FILE) if path is None else Path(path)
    try:
        record = json.loads(_read_text(source, "selection record"))
    except json.JSONDecodeError as error:
        raise UnlearnkitError(f"The selection record {str(source)!r} is not valid JSON ({error.msg}).") from None
    if not isinstance(record, dict):
        raise UnlearnkitError(f"The selection record {str(source)!r} must hold a JSON object.")
    return record


def probes_in_corpus(passages: Sequence[Mapping[str, str]], probes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The probe prompts (questions, cloze texts before the blank) found word for word in a passage (case and spacing aside).

    A corpus that quotes its probes lets a method score by suppressing those exact
    strings; the shipped corpora hold none.
    """
    texts = [" ".join(passage["text"].lower().split()) for passage in passages]
    prompts = dict.fromkeys(" ".join(probe_prompt(probe).lower().split()) for probe in probes)
    return [prompt for prompt in prompts if any(prompt in text for text in texts)]
