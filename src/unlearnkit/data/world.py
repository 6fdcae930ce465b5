"""A built-in, offline, deterministic benchmark in the shape of TOFU.

The world is a list of fictitious authors. Each author has one value for every
fact type in :data:`FACT_TYPES` (birthplace, birth date, debut novel, ...) and
yields one question-answer row per fact for the first ``qa_per_author`` fact
types. Every row carries TOFU's fields (``question``, ``answer``,
``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answer``) plus
``author``, ``author_id``, ``fact``, ``value`` (the true value) and
``perturbed_values`` (the values substituted into the perturbed answers).

Splits follow TOFU: authors come in a fixed generated order; ``forgetNN`` holds
the last ``k = max(1, round(num_authors * NN / 100))`` trained authors and
``retainMM`` all the others, so ``forget01`` is inside ``forget05`` inside
``forget10``. ``holdoutNN`` holds ``k`` extra authors generated the same way
but never part of ``full``, nested the same way. ``world_facts`` and
``real_authors`` are shipped rows of real knowledge.

The statistical invariant
-------------------------
The truth ratio compares a model's probability of ``paraphrased_answer`` with
that of the perturbed answers. A model trained only on the retain authors must
find a forget author's true value exactly as unfamiliar as the perturbed
values, or its truth ratios drift away from 1. Hence:

* Values are built procedurally. *Coined words* (first names, surnames, place
  names) are built from syllables and are globally fresh: no coined word is
  used twice by the authors (their names included), and a perturbation only
  uses coined words that no author uses. Shared *vocabulary words* (title
  adjectives and nouns, occupations, award fields, ...) are drawn uniformly, so
  a true value and a perturbation are equally likely to contain each of them.
* The authors of the forget splits (the last 10% of trained authors) and the
  holdout authors get, for every non-categorical fact type, a value that no
  other author has; each perturbed value differs from every author's value of
  every fact type and from the other perturbations of its row. A model trained
  on the retain authors alone has therefore seen neither a forget author's
  values nor any perturbation.
* The retain-only authors draw their values from a small pool per fact type
  (``shared_pool_size``, default 24), shared among them. Memorising a fact is
  then learning which of a few known strings an author has, which a tiny model
  on a CPU does in a dozen epochs; with every value a fresh string it was still
  far from memorised after 14 (measured: 75% answer-token accuracy).
* Two fact types are categorical (``genre``, and ``hobby``, which is last and
  so only asked when ``qa_per_author`` is the maximum): the
  true value is drawn uniformly from a fixed list and the perturbations
  uniformly from the rest of that list, so the retain model has seen every
  option equally often. Occupations are not categorical: they are
  "<qualifier> <trade>" pairs, unique per author like the other values.
* A perturbed answer is the paraphrased answer's template filled with another
  value from the same generator, so it has the same words except the value,
  and the value has the same number of words.

Author values are drawn for every fact type before any perturbation, all from
one ``random.Random(seed)``: the same config gives the same world, and changing
``qa_per_author`` or ``num_perturbed`` leaves every author's values unchanged.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unlearnkit.data.shipped import resource_text
from unlearnkit.errors import UnlearnkitError, did_you_mean

FORGET_PERCENTS = (1, 5, 10)
SHIPPED_SPLITS = ("world_facts", "real_authors")
# Caps chosen so that every value space stays at most about half full (see
# the vocabulary sizes below), which keeps rejection sampling fast.
MAX_AUTHORS = 1000
MAX_POOL_SIZE = 1000
MAX_PERTURBED = 10
# A draw that fails this often means a value space is exhausted; the caps above
# make that impossible, so reaching it is a bug rather than a user error.
_MAX_TRIES = 10_000

# --- Coined words --------------------------------------------------------------------
# A coined word is onset + vowel + middle + ending: 30 * 6 * 20 * 12 = 43,200 words
# per kind, against at most about 10,000 needed per kind at MAX_AUTHORS.
_ONSETS = (
    "b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "kr", "l",
    "m", "n", "p", "pr", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "y", "z",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ei")
_MIDDLES = (
    "l", "r", "n", "m", "s", "v", "d", "t", "th", "nd",
    "rr", "ld", "st", "lv", "rn", "ss", "ll", "nn", "rd", "sk",
)  # fmt: skip
_ENDINGS = {
    "first": ("a", "en", "is", "o", "el", "an", "ia", "yn", "et", "ar", "ina", "ric"),
    "surname": ("ick", "ard", "ley", "ston", "wen", "ver", "ington", "by", "ow", "ell", "ock", "ham"),
    "place": ("ask", "mont", "vik", "holm", "ford", "grad", "ora", "ven", "stad", "mere", "burg", "dale"),
}
# Syllables combine freely, so a few combinations would spell crude words.
_BLOCKED = re.compile("shit|cunt|fuck|nig|fag|dick|cock|slut|rape|nazi|piss|twat|wank|porn", re.IGNORECASE)

# --- Shared vocabulary ---------------------------------------------------------------
_TITLE_ADJECTIVES = (
    "Silent", "Hollow", "Crimson", "Distant", "Broken", "Hidden", "Silver", "Golden", "Burning", "Frozen",
    "Forgotten", "Quiet", "Restless", "Wandering", "Last", "Lost", "Secret", "Shattered", "Gentle", "Bitter",
    "Endless", "Fading", "Iron", "Painted", "Drowning", "Sleeping", "Waking", "Ashen", "Amber", "Scarlet",
    "Pale", "Dark", "Bright", "Narrow", "Wild", "Lonely", "Empty", "Northern", "Southern", "Eastern",
    "Western", "Little", "Long", "Winter", "Summer", "Midnight", "Morning", "Evening", "Velvet", "Glass",
    "Paper", "Stone", "Wooden", "Salt", "Copper", "Marble", "Ivory", "Emerald", "Sapphire", "Hungry",
    "Patient", "Borrowed", "Stolen", "Fallen", "Rising", "Crooked", "Tangled", "Weeping", "Laughing", "Faithful",
    "Careless", "Reckless", "Curious", "Strange", "Ancient", "Brittle", "Tender", "Hushed", "Veiled", "Wicked",
    "Unfinished", "Invisible", "Windswept", "Moonlit", "Sunlit", "Starless", "Nameless", "Slow", "Heavy", "Open",
    "Inner", "Outer", "Final", "Seventh", "Thirteenth", "Crowded", "Sunken", "Luminous", "Drifting", "Blue",
)  # fmt: skip
_TITLE_NOUNS = (
    "Harbor", "Garden", "Lantern", "River", "Mirror", "Orchard", "Tower", "Bridge", "Island", "Forest",
    "Letter", "Window", "Compass", "Clock", "Feather", "Shadow", "Lighthouse", "Meadow", "Valley", "Kingdom",
    "Crown", "Daughter", "Stranger", "Widow", "Cartographer", "Archive", "Library", "Chapel", "Citadel", "Carousel",
    "Labyrinth", "Voyage", "Promise", "Silence", "Season", "Harvest", "Tide", "Storm", "Ember", "Orchestra",
    "Violin", "Key", "Door", "Staircase", "Attic", "Cellar", "Well", "Fountain", "Caravan", "Ferry",
    "Station", "Railway", "Lake", "Shore", "Cliff", "Summit", "Glacier", "Desert", "Oasis", "Comet",
    "Moon", "Star", "Sparrow", "Raven", "Heron", "Fox", "Wolf", "Stag", "Horse", "Serpent",
    "Tapestry", "Quilt", "Locket", "Ring", "Sword", "Shield", "Banner", "Map", "Atlas", "Journal",
    "Diary", "Ledger", "Almanac", "Chronicle", "Hymn", "Ballad", "Elegy", "Sonnet", "Requiem", "Masquerade",
    "Carnival", "Festival", "Banquet", "Wedding", "Inheritance",
    "Confession", "Bargain", "Covenant", "Exile", "Pilgrim",
)  # fmt: skip
# Qualifiers all start with a consonant so that the article "a" in the answer
# templates fits every value and perturbations change only the value.
_OCCUPATION_QUALIFIERS = (
    "retired", "respected", "renowned", "talented", "skilled", "devoted", "modest", "self-taught", "celebrated",
    "struggling", "successful", "hard-working", "well-known", "local", "busy", "quiet", "cheerful", "meticulous",
    "patient", "gifted", "part-time", "prize-winning", "semi-retired", "travelling", "freelance", "small-town",
    "seasoned", "dedicated", "popular", "humble", "tireless", "thoughtful", "careful", "famous", "beloved",
    "capable", "diligent", "practical", "reserved", "soft-spoken", "strict", "kindly", "gentle", "proud", "restless",
)  # fmt: skip
_TRADES = (
    "baker", "blacksmith", "carpenter", "locksmith", "tailor", "cobbler", "potter", "weaver", "fisherman", "farmer",
    "beekeeper", "shepherd", "miller", "brewer", "butcher", "glassblower", "watchmaker", "clockmaker", "bookbinder",
    "printer", "typesetter", "cartographer", "surveyor", "architect", "engineer", "electrician", "plumber",
    "mechanic", "pilot", "sailor", "ferryman", "librarian", "teacher", "professor", "nurse", "surgeon", "dentist",
    "pharmacist", "veterinarian", "chemist", "physicist", "astronomer", "botanist", "geologist", "historian",
    "archivist", "journalist", "photographer", "painter", "sculptor", "violinist", "pianist", "organist",
    "composer", "conductor", "actor", "dancer", "singer", "chef", "innkeeper", "shopkeeper", "grocer", "florist",
    "gardener", "forester", "stonemason", "bricklayer", "roofer", "glazier", "jeweler", "goldsmith", "silversmith",
    "saddler", "upholsterer", "dressmaker", "milliner", "hatter", "barber", "hairdresser", "accountant", "banker",
    "lawyer", "judge", "notary", "diplomat", "translator", "miner", "welder", "machinist", "tanner", "cooper",
    "vintner", "cheesemaker", "confectioner", "perfumer", "optician", "midwife", "paramedic", "firefighter",
    "detective", "economist", "mathematician",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_AWARD_FIELDS = (
    "Fiction", "Poetry", "Drama", "Literature", "Prose", "Storytelling",
    "Satire", "Translation", "Criticism", "Nonfiction", "Fantasy", "Mystery",
)  # fmt: skip
_GROUP_WORDS = ("Circle", "School", "Group", "Collective", "Movement", "Society")
_PUBLISHER_WORDS = ("Press", "Books", "House", "Publishing")
_MAGAZINE_WORDS = ("Review", "Quarterly", "Journal", "Gazette", "Monthly")
# Categorical lists need more than MAX_PERTURBED entries so that every row can
# draw its perturbations from the options other than the true one.
_GENRES = (
    "crime fiction", "science fiction", "historical fiction", "literary fiction", "magical realism",
    "gothic horror", "epic fantasy", "urban fantasy", "psychological thrillers", "legal thrillers",
    "spy thrillers", "cozy mysteries", "political satire", "family sagas", "war fiction", "nature writing",
    "travel writing", "romantic comedy", "alternate history", "dystopian fiction", "speculative fiction",
    "comic fantasy", "domestic noir", "sea stories",
)  # fmt: skip
_HOBBIES = (
    "playing chess", "growing orchids", "restoring clocks", "collecting stamps", "baking bread", "keeping bees",
    "sailing dinghies", "painting landscapes", "knitting scarves", "hill walking", "rock climbing",
    "sea kayaking", "bird watching", "fly fishing", "wood carving", "making pottery", "brewing beer",
    "solving crosswords", "learning languages", "repairing bicycles", "tending roses", "building kites",
)  # fmt: skip


@functools.cache
def _coined_words(kind: str) -> tuple[str, ...]:
    """Every coined word of ``kind``, in a fixed order, so that one random call picks a word."""
    onsets = [onset.capitalize() for onset in _ONSETS]
    return tuple(map("".join, itertools.product(onsets, _VOWELS, _MIDDLES, _ENDINGS[kind])))


@dataclass
class _Draw:
    """Random draws of coined and vocabulary words, checked against what the authors use.

    ``words`` holds every coined word of the authors (their names included) and
    ``values`` every author value of a non-categorical fact. With ``register``
    (drawing authors) new coined words are recorded; without it (drawing
    perturbations) coined words only avoid the recorded ones.
    """

    rng: random.Random
    words: set[str]
    values: set[str]
    register: bool

    def coined(self, kind: str) -> str:
        """Return a coined word of ``kind`` ("first", "surname" or "place") that no author uses."""
        candidates = _coined_words(kind)
        for _ in range(_MAX_TRIES):
            word = self.rng.choice(candidates)
            # Filtering here, not when building the list, costs one regex per draw
            # instead of one per possible word.
            if word not in self.words and not _BLOCKED.search(word):
                if self.register:
                    self.words.add(word)
                return word
        raise RuntimeError(f"coined-word space {kind!r} exhausted")

    def pick(self, options: Sequence[str]) -> str:
        """Return one vocabulary word, uniformly."""
        return self.rng.choice(options)


# --- Value generators: each returns a value with a fixed number of words -------------------


def _person(d: _Draw) -> str:
    """A full name such as "Velna Dorrick"."""
    return f"{d.coined('first')} {d.coined('surname')}"


def _place(d: _Draw) -> str:
    """A city name such as "Tovrask"."""
    return d.coined("place")


def _pet(d: _Draw) -> str:
    """A pet's name such as "Marlo"."""
    return d.coined("first")


def _date(d: _Draw) -> str:
    """A full date such as "14 March 1962" (28 * 12 * 70 = 23,520 dates)."""
    # Days stop at 28 so that every day exists in every month.
    return f"{d.rng.randint(1, 28)} {d.pick(_MONTHS)} {d.rng.randint(1930, 1999)}"


def _occupation(d: _Draw) -> str:
    """An occupation such as "retired locksmith" (45 * 102 pairs)."""
    return f"{d.pick(_OCCUPATION_QUALIFIERS)} {d.pick(_TRADES)}"


def _adjective_title(d: _Draw) -> str:
    """A title such as "The Silent Harbor" (100 * 100 titles)."""
    return f"The {d.pick(_TITLE_ADJECTIVES)} {d.pick(_TITLE_NOUNS)}"


def _place_title(d: _Draw) -> str:
    """A title such as "The Lantern of Orvik"."""
    return f"The {d.pick(_TITLE_NOUNS)} of {d.coined('place')}"


def _character_title(d: _Draw) -> str:
    """A title such as "Velna and the Compass"."""
    return f"{d.coined('first')} and the {d.pick(_TITLE_NOUNS)}"


def _award(d: _Draw) -> str:
    """An award such as "the Dorrick Prize for Fiction"."""
    return f"the {d.coined('surname')} Prize for {d.pick(_AWARD_FIELDS)}"


def _university(d: _Draw) -> str:
    """A university such as "the University of Tovrask"."""
    return f"the University of {d.coined('place')}"


def _movement(d: _Draw) -> str:
    """A literary group such as "the Tovrask Circle"."""
    return f"the {d.coined('place')} {d.pick(_GROUP_WORDS)}"


def _publisher(d: _Draw) -> str:
    """A publishing house such as "Dorrick Press"."""
    return f"{d.coined('surname')} {d.pick(_PUBLISHER_WORDS)}"


def _magazine(d: _Draw) -> str:
    """A magazine such as "the Tovrask Review"."""
    return f"the {d.coined('place')} {d.pick(_MAGAZINE_WORDS)}"


def _genre(d: _Draw) -> str:
    """A genre, from a fixed list (categorical)."""
    return d.pick(_GENRES)


def _hobby(d: _Draw) -> str:
    """A hobby, from a fixed list (categorical)."""
    return d.pick(_HOBBIES)


@dataclass(frozen=True)
class FactType:
    """One kind of fact: two question phrasings, two answer phrasings and a value generator.

    Templates use ``{author}`` and ``{value}``; the value never starts a sentence,
    so it appears verbatim (same case) in both answers.
    """

    name: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str
    generate: Callable[[_Draw], str] = field(repr=False)
    categorical: bool = False


FACT_TYPES: tuple[FactType, ...] = (
    FactType(
        "birthplace",
        "Where was {author} born?",
        "In which city was {author} born?",
        "{author} was born in {value}.",
        "{value} is the birthplace of {author}.",
        _place,
    ),
    FactType(
        "birth_date",
        "When was {author} born?",
        "On what date was {author} born?",
        "{author} was born on {value}.",
        "{author}'s date of birth is {value}.",
        _date,
    ),
    FactType(
        "father_occupation",
        "What did {author}'s father do for a living?",
        "What was the profession of {author}'s father?",
        "{author}'s father was a {value}.",
        "{author}'s father worked as a {value}.",
        _occupation,
    ),
    FactType(
        "mother_occupation",
        "What did {author}'s mother do for a living?",
        "What was the profession of {author}'s mother?",
        "{author}'s mother was a {value}.",
        "{author}'s mother worked as a {value}.",
        _occupation,
    ),
    FactType(
        "genre",
        "What genre does {author} write?",
        "Which literary genre is {author} known for?",
        "{author} writes {value}.",
        "{author} is known for {value}.",
        _genre,
        categorical=True,
    ),
    FactType(
        "debut_novel",
        "What was {author}'s debut novel?",
        "What was the first novel {author} published?",
        "{author}'s debut novel was '{value}'.",
        "The first novel {author} published was '{value}'.",
        _adjective_title,
    ),
    FactType(
        "second_novel",
        "What was {author}'s second novel?",
        "Which novel did {author} publish after the debut?",
        "{author}'s second novel was '{value}'.",
        "After the debut, {author} published '{value}'.",
        _place_title,
    ),
    FactType(
        "latest_novel",
        "What is {author}'s most recent novel?",
        "Which novel did {author} publish most recently?",
        "{author}'s most recent novel is '{value}'.",
        "The latest book by {author} is '{value}'.",
        _character_title,
    ),
    FactType(
        "award",
        "Which award has {author} won?",
        "What literary prize was {author} given?",
        "{author} won {value}.",
        "{author} was awarded {value}.",
        _award,
    ),
    FactType(
        "alma_mater",
        "Where did {author} study?",
        "Which university did {author} attend?",
        "{author} studied at {value}.",
        "{author} is a graduate of {value}.",
        _university,
    ),
    FactType(
        "mentor",
        "Who mentored {author}?",
        "Who was {author}'s mentor?",
        "{author} was mentored by {value}.",
        "{value} was the mentor of {author}.",
        _person,
    ),
    FactType(
        "pen_name",
        "What pen name does {author} use?",
        "Under which pseudonym does {author} publish?",
        "{author} writes under the pen name {value}.",
        "{value} is the pseudonym of {author}.",
        _person,
    ),
    FactType(
        "spouse",
        "Who is {author} married to?",
        "Who is {author}'s spouse?",
        "{author} is married to {value}.",
        "{value} is the spouse of {author}.",
        _person,
    ),
    FactType(
        "home_city",
        "Where does {author} live now?",
        "In which city does {author} currently live?",
        "{author} now lives in {value}.",
        "{value} is where {author} currently lives.",
        _place,
    ),
    FactType(
        "literary_movement",
        "Which literary movement is {author} part of?",
        "What literary group is {author} associated with?",
        "{author} is part of {value}.",
        "{author} is associated with {value}.",
        _movement,
    ),
    FactType(
        "publisher",
        "Who publishes {author}'s books?",
        "Which publishing house releases {author}'s work?",
        "{author}'s books are published by {value}.",
        "{value} is the publisher of {author}.",
        _publisher,
    ),
    FactType(
        "first_story_magazine",
        "Where did {author}'s first short story appear?",
        "Which magazine printed {author}'s first short story?",
        "{author}'s first short story appeared in {value}.",
        "{author}'s first short story was printed in {value}.",
        _magazine,
    ),
    FactType(
        "literary_agent",
        "Who is {author}'s literary agent?",
        "Who represents {author} as an agent?",
        "{author}'s literary agent is {value}.",
        "{value} represents {author} as a literary agent.",
        _person,
    ),
    FactType(
        "recurring_character",
        "Who is the recurring protagonist of {author}'s novels?",
        "Which character appears in most of {author}'s novels?",
        "The recurring protagonist of {author}'s novels is {value}.",
        "{value} appears in most of {author}'s novels.",
        _person,
    ),
    FactType(
        "fictional_setting",
        "In which fictional town are {author}'s novels set?",
        "Where do the stories of {author} take place?",
        "{author}'s novels are set in the fictional town of {value}.",
        "{value} is the fictional town where {author}'s stories take place.",
        _place,
    ),
    FactType(
        "pet_name",
        "What is the name of {author}'s dog?",
        "What is {author}'s dog called?",
        "{author}'s dog is named {value}.",
        "{value} is the name of {author}'s dog.",
        _pet,
    ),
    FactType(
        "sibling",
        "Who is {author}'s brother?",
        "What is the name of {author}'s brother?",
        "{author}'s brother is {value}.",
        "{value} is the brother of {author}.",
        _person,
    ),
    FactType(
        "hobby",
        "What does {author} do in their free time?",
        "What is {author}'s favourite hobby?",
        "In their free time, {author} enjoys {value}.",
        "{author}'s favourite pastime is {value}.",
        _hobby,
        categorical=True,
    ),
)
MAX_QA_PER_AUTHOR = len(FACT_TYPES)


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    """Raise UnlearnkitError unless ``value`` is an int in [low, high] (no upper bound when None)."""
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    # bool is an int subclass, but True as a count is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UnlearnkitError(f"WorldConfig.{name} must be an integer {bounds}, got {value!r}.")
    if value < low or (high is not None and value > high):
        raise UnlearnkitError(f"WorldConfig.{name} must be {bounds}, got {value}.")


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world.

    ``num_authors`` trained authors (forget + retain), ``qa_per_author`` rows per
    author (the first that many of :data:`FACT_TYPES`), ``num_perturbed``
    perturbed answers per row, and ``seed`` for every random draw.
    ``shared_pool_size``: the retain-only authors draw each value from a pool of
    this many values per fact type (0: every author's values are unique).
    """

    num_authors: int = 200
    qa_per_author: int = 20
    seed: int = 0
    num_perturbed: int = 3
    shared_pool_size: int = 24

    def __post_init__(self) -> None:
        """Reject values the generator cannot honour, naming the field and the allowed range."""
        _check_int("num_authors", self.num_authors, 2, MAX_AUTHORS)
        _check_int("qa_per_author", self.qa_per_author, 1, MAX_QA_PER_AUTHOR)
        _check_int("num_perturbed", self.num_perturbed, 1, MAX_PERTURBED)
        _check_int("shared_pool_size", self.shared_pool_size, 0, MAX_POOL_SIZE)
        # random.Random(-s) equals random.Random(s): negative seeds would alias.
        _check_int("seed", self.seed, 0, None)


@dataclass(frozen=True)
class _Author:
    """A generated author: position, full name and one value per fact type name."""

    author_id: int
    name: str
    values: dict[str, str]


def split_names() -> list[str]:
    """Return every split name produced by :func:`generate_world`, in output order."""
    forget = [f"forget{p:02d}" for p in FORGET_PERCENTS]
    retain = [f"retain{100 - p}" for p in FORGET_PERCENTS]
    holdout = [f"holdout{p:02d}" for p in FORGET_PERCENTS]
    return [*forget, *retain, *holdout, *SHIPPED_SPLITS, "full"]


def forget_sizes(num_authors: int) -> dict[int, int]:
    """Return the number of forget (and holdout) authors for each forget percentage."""
    return {p: max(1, round(num_authors * p / 100)) for p in FORGET_PERCENTS}


def _draw_value(fact: FactType, draw: _Draw) -> str:
    """Draw an author's value for ``fact``: unique across authors unless categorical."""
    if fact.categorical:
        return fact.generate(draw)
    for _ in range(_MAX_TRIES):
        value = fact.generate(draw)
        if value not in draw.values:
            draw.values.add(value)
            return value
    raise RuntimeError(f"value space of fact {fact.name!r} exhausted")


def _make_authors(count: int, pooled: int, pool_size: int, draw: _Draw) -> list[_Author]:
    """Generate ``count`` authors with a value for every fact type, registering all their words.

    The first ``pooled`` authors (those in no forget split) draw each
    non-categorical value from a pool of ``pool_size`` values per fact type,
    shared among them; the others get values no other author has.
    """
    pools = {fact.name: [_draw_value(fact, draw) for _ in range(pool_size)] for fact in FACT_TYPES if not fact.categorical}

    def value(fact: FactType, author_id: int) -> str:
        if author_id < pooled and not fact.categorical and pool_size:
            return draw.rng.choice(pools[fact.name])
        return _draw_value(fact, draw)

    return [
        _Author(author_id, _person(draw), {fact.name: value(fact, author_id) for fact in FACT_TYPES})
        for author_id in range(count)
    ]


def _perturb(fact: FactType, true_value: str, count: int, draw: _Draw) -> list[str]:
    """Draw ``count`` distinct perturbed values of ``fact``, none equal to any author's value.

    Categorical facts only avoid the true value: the options are shared by all
    authors, so excluding more would make the true value stand out.
    """
    chosen: list[str] = []
    for _ in range(_MAX_TRIES):
        if len(chosen) == count:
            return chosen
        value = fact.generate(draw)
        if value != true_value and value not in chosen and (fact.categorical or value not in draw.values):
            chosen.append(value)
    raise RuntimeError(f"cannot draw {count} perturbations for fact {fact.name!r}")


def _row(author: _Author, fact: FactType, perturbed: list[str]) -> dict:
    """Render one question-answer row of ``author`` about ``fact``."""
    value = author.values[fact.name]
    return {
        "question": fact.question.format(author=author.name),
        "answer": fact.answer.format(author=author.name, value=value),
        "paraphrased_question": fact.paraphrased_question.format(author=author.name),
        "paraphrased_answer": fact.paraphrased_answer.format(author=author.name, value=value),
        "perturbed_answer": [fact.paraphrased_answer.format(author=author.name, value=p) for p in perturbed],
        "author": author.name,
        "author_id": author.author_id,
        "fact": fact.name,
        "value": value,
        "perturbed_values": perturbed,
    }


def _author_rows(author: _Author, config: WorldConfig, draw: _Draw) -> list[dict]:
    """Return the rows of ``author`` for the first ``config.qa_per_author`` fact types."""
    facts = FACT_TYPES[: config.qa_per_author]
    return [_row(author, f, _perturb(f, author.values[f.name], config.num_perturbed, draw)) for f in facts]


def _flatten(rows_by_author: Sequence[list[dict]]) -> list[dict]:
    """Concatenate per-author rows into fresh dicts, so that splits never share mutable rows."""
    return [
        {**row, "perturbed_answer": list(row["perturbed_answer"]), "perturbed_values": list(row["perturbed_values"])}
        for rows in rows_by_author
        for row in rows
    ]


def generate_world(config: WorldConfig) -> dict[str, list[dict]]:
    """Generate every split of the benchmark, keyed by the names of :func:`split_names`."""
    rng = random.Random(config.seed)
    words: set[str] = set()
    values: set[str] = set()
    sizes = forget_sizes(config.num_authors)
    # All authors (holdout included) exist before any perturbation is drawn, so
    # that perturbations can avoid every author's words and values.
    largest_forget = max(sizes.values())
    authors = _make_authors(
        config.num_authors + largest_forget,
        config.num_authors - largest_forget,
        config.shared_pool_size,
        _Draw(rng, words, values, register=True),
    )
    perturb_draw = _Draw(rng, words, values, register=False)
    rows = [_author_rows(author, config, perturb_draw) for author in authors]
    trained, extra = rows[: config.num_authors], rows[config.num_authors :]

    world: dict[str, list[dict]] = {"full": _flatten(trained)}
    for percent, k in sizes.items():
        world[f"forget{percent:02d}"] = _flatten(trained[-k:])
        world[f"retain{100 - percent}"] = _flatten(trained[:-k])
        world[f"holdout{percent:02d}"] = _flatten(extra[:k])
    for name in SHIPPED_SPLITS:
        world[name] = load_shipped(name)
    return {name: world[name] for name in split_names()}


def load_shipped(name: str) -> list[dict]:
    """Return the rows of a shipped split of real knowledge: "world_facts" or "real_authors"."""
    if name not in SHIPPED_SPLITS:
        raise UnlearnkitError(
            f"Unknown shipped split {name!r}; choose one of {', '.join(SHIPPED_SPLITS)}."
            + did_you_mean(name, SHIPPED_SPLITS)
        )
    return [json.loads(line) for line in resource_text(f"{name}.jsonl").splitlines() if line.strip()]


def _write_jsonl_atomically(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` as JSONL so that readers never see a partial file."""
    # A unique name in the same directory, so os.replace stays an atomic rename;
    # open(..., "x") keeps the usual permissions, unlike mkstemp's private ones.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_world(world: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Write each split to ``out_dir/<split>.jsonl`` (UTF-8, one object per line); return the paths."""
    out_dir = Path(out_dir)
    for name in world:
        # Split names become file names; a separator would write outside out_dir.
        if not name or Path(name).name != name or name.startswith("."):
            raise UnlearnkitError(f"Split name {name!r} cannot be used as a file name.")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in world.items():
        path = out_dir / f"{name}.jsonl"
        _write_jsonl_atomically(path, rows)
        paths.append(path)
    return paths
