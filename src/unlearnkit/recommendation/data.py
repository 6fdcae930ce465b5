"""A built-in synthetic user–item interaction dataset, rendered as Yes/No recommendation prompts.

The task is E2URec's (Wang et al., "Towards Efficient and Effective Unlearning of Large Language Models
for Recommendation", Frontiers of Computer Science, 2024): given a user's profile and the last K items
they rated, will they like a target item? The label is 1 when the rating is above 3, and the answer is
"Yes." or "No.". MovieLens-1M is not shipped, so users, items and ratings are drawn here:

* each user has a gender, a job and an age group (MovieLens-1M's groups), and a latent taste for every
  genre, shifted by their job (so the profile carries signal, as a demographic does);
* each item is a fictitious movie with a title, a year, a genre and a latent quality;
* a rating is ``round(3.3 + taste[genre] + quality + noise)`` clipped to 1..5;
* a user's interactions form one ordered sequence; every target item is asked about with the K items
  just before it as the history (a sliding window, as the reference's preprocessing builds its rows);
  the first ``train_targets`` targets are training rows, the last ``test_targets`` are held out.

The prompt follows the four parts of the reference's "simple" template (its wording is ours): the
profile, "watched the following movies in order in the past, and rated them:" with the numbered history,
"deduce if ... will like the movie ***title***" with the note on stars, and "You should ONLY tell me yes
or no.".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from unlearnkit.errors import UnlearnkitError
from unlearnkit.settings import check_field_types, check_seed, require_at_least, require_non_negative

YES, NO = "Yes.", "No."
# A rating above this is a "like" (the reference: label = 1 if rating > 3).
LIKE_ABOVE = 3
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation")
JOBS = ("artist", "doctor", "educator", "engineer", "homemaker", "lawyer", "programmer", "retired", "salesman",
        "scientist", "student", "writer")
AGES = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_ADJECTIVES = ("Silent", "Crimson", "Hidden", "Broken", "Golden", "Frozen", "Lost", "Midnight", "Burning", "Iron",
               "Velvet", "Distant", "Savage", "Hollow", "Electric", "Quiet", "Wild", "Last", "Secret", "Paper")
_NOUNS = ("Harbor", "Garden", "Empire", "River", "Mirror", "Station", "Kingdom", "Letter", "Horizon", "Circus",
          "Island", "Signal", "Orchard", "Voyage", "Engine", "Lantern", "Canyon", "Promise", "Winter", "Machine")
# The rating's offset: 3.3 puts about 45% of ratings above 3 (balanced enough for AUC and accuracy to mean something).
_RATING_CENTRE = 3.3
# How much a job shifts the taste for its favourite genre (the profile's signal).
_JOB_TASTE = 0.8


@dataclass(frozen=True)
class RecDataConfig:
    """Sizes and randomness of the synthetic interaction data."""

    num_users: int = field(default=30, metadata={"help": "Users in the training set (the reference forgets 20% of them)."})
    num_items: int = field(default=20, metadata={"help": "Distinct fictitious movies."})
    num_genres: int = field(default=6, metadata={"help": f"Genres used, the first of {', '.join(GENRES)}."})
    history_length: int = field(
        default=3, metadata={"help": "K: rated items shown in each prompt (the reference: 10; 3 keeps prompts short enough for the "
                                     "tiny model to learn the task in minutes on a CPU)."})
    train_targets: int = field(default=4, metadata={"help": "Training rows per user (the target items asked about)."})
    test_targets: int = field(default=2, metadata={"help": "Held-out rows per user, after the training ones in time."})
    taste_scale: float = field(default=1.0, metadata={"help": "Standard deviation of a user's taste for a genre."})
    quality_scale: float = field(default=0.7, metadata={"help": "Standard deviation of an item's quality."})
    rating_noise: float = field(default=0.5, metadata={"help": "Standard deviation of the noise on each rating."})
    data_seed: int = field(default=0, metadata={"help": "Seed of users, items and ratings."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(2, num_users=self.num_users)  # one to forget, one to keep
        require_at_least(1, num_items=self.num_items, history_length=self.history_length, train_targets=self.train_targets,
                         test_targets=self.test_targets, num_genres=self.num_genres)
        require_non_negative(taste_scale=self.taste_scale, quality_scale=self.quality_scale, rating_noise=self.rating_noise)
        if self.num_genres > len(GENRES):
            raise UnlearnkitError(f"num_genres must be at most {len(GENRES)} (the genres: {', '.join(GENRES)}), got {self.num_genres}.")
        needed = self.history_length + self.train_targets + self.test_targets
        if self.num_items < needed:
            raise UnlearnkitError(f"num_items {self.num_items} is too few: each user rates history_length + train_targets + "
                                  f"test_targets = {needed} distinct items. Raise num_items or lower those counts.")
        if self.num_items > len(_ADJECTIVES) * len(_NOUNS):
            raise UnlearnkitError(f"num_items must be at most {len(_ADJECTIVES) * len(_NOUNS)} (distinct titles), got {self.num_items}.")
        check_seed("data_seed", self.data_seed)


@dataclass(frozen=True)
class User:
    id: int
    gender: str  # "male" or "female"
    job: str
    age: str
    taste: tuple[float, ...]  # (num_genres,)


@dataclass(frozen=True)
class Item:
    id: int
    title: str
    genre: str
    quality: float


@dataclass(frozen=True)
class RecDataset:
    """Users, items, each user's rated sequence, and the rows: training (every user) and held-out (every user)."""

    users: tuple[User, ...]
    items: tuple[Item, ...]
    sequences: dict[int, tuple[tuple[int, int], ...]]  # user id -> ((item id, rating), ...) in time order
    train_rows: tuple[dict, ...]
    heldout_rows: tuple[dict, ...]

    @property
    def user_ids(self) -> list[int]:
        return [user.id for user in self.users]


@dataclass(frozen=True)
class UserSplit:
    """Which users are forgotten (their training rows form D_f) and which are retained (D_r, and the test set)."""

    forget: tuple[int, ...]
    retain: tuple[int, ...]
    how: str  # "fraction 0.2 of shuffled users" or "chosen ids"

    def record(self) -> dict:
        return {"forget": list(self.forget), "retain": list(self.retain), "how": self.how}


def build_dataset(config: RecDataConfig) -> RecDataset:
    """Draw users, items and ratings from ``config.data_seed`` (the same seed gives the same data) and render the rows."""
    rng = random.Random(config.data_seed)
    genres = GENRES[: config.num_genres]
    titles = [f"The {adjective} {noun}" for adjective in _ADJECTIVES for noun in _NOUNS]
    rng.shuffle(titles)
    items = tuple(Item(i, f"{titles[i]} ({rng.randint(1950, 2009)})", rng.choice(genres), rng.gauss(0.0, config.quality_scale))
                  for i in range(config.num_items))
    users = []
    for u in range(config.num_users):
        job = rng.choice(JOBS)
        favourite = JOBS.index(job) % len(genres)  # each job leans to one genre
        taste = tuple(rng.gauss(0.0, config.taste_scale) + (_JOB_TASTE if g == favourite else 0.0) for g in range(len(genres)))
        users.append(User(u, rng.choice(("male", "female")), job, rng.choice(AGES), taste))
    length = config.history_length + config.train_targets + config.test_targets
    sequences: dict[int, tuple[tuple[int, int], ...]] = {}
    train_rows, heldout_rows = [], []
    for user in users:
        chosen = rng.sample(range(config.num_items), length)
        sequence = tuple((i, _rating(user, items[i], genres, config.rating_noise, rng)) for i in chosen)
        sequences[user.id] = sequence
        for position in range(config.history_length, length):
            history = [(items[i], rating) for i, rating in sequence[position - config.history_length: position]]
            target, rating = items[sequence[position][0]], sequence[position][1]
            row = make_row(user, history, target, rating)
            (train_rows if position < config.history_length + config.train_targets else heldout_rows).append(row)
    return RecDataset(tuple(users), items, sequences, tuple(train_rows), tuple(heldout_rows))


def _rating(user: User, item: Item, genres: Sequence[str], noise: float, rng: random.Random) -> int:
    score = _RATING_CENTRE + user.taste[genres.index(item.genre)] + item.quality + rng.gauss(0.0, noise)
    return int(min(5, max(1, round(score))))


def render_prompt(user: User, history: Sequence[tuple[Item, int]], target: Item) -> str:
    """The prompt: profile, the rated history in order, the question about ``target``, and the yes/no instruction."""
    pronoun = "he" if user.gender == "male" else "she"
    lines = [f"The user is a {user.gender} {user.job}, aged {user.age}. "
             f"{pronoun.capitalize()} watched the following movies in order in the past, and rated them:"]
    lines += [f"{number}. {item.title}, {rating} stars" for number, (item, rating) in enumerate(history, start=1)]
    lines.append(f"Based on the movies {pronoun} has watched, deduce if {pronoun} will like the movie ***{target.title}***. "
                 "Note that more stars the user rated the movie, the more the user liked the movie.")
    lines.append("You should ONLY tell me yes or no.")
    return "\n".join(lines)


def make_row(user: User, history: Sequence[tuple[Item, int]], target: Item, rating: int) -> dict:
    """A question/answer row (the package's QA schema) carrying the user, the item, the rating and the 0/1 label."""
    label = int(rating > LIKE_ABOVE)
    return {"question": render_prompt(user, history, target), "answer": YES if label else NO,
            "user": user.id, "item": target.id, "rating": rating, "label": label}


def split_users(
    dataset: RecDataset, forget_fraction: float | None = None, users: Sequence[int] | None = None, seed: int = 0,
) -> UserSplit:
    """Forget the first ``forget_fraction`` of the users shuffled with ``seed`` (the reference: 20%), or the ids ``users``.

    Refused: both or neither given, a fraction outside (0, 1), ids that do not exist (the message gives the valid
    range), and a forget set that would forget nobody or leave no retained user.
    """
    ids = dataset.user_ids
    valid = f"0..{len(ids) - 1}"
    if (forget_fraction is None) == (users is None):
        raise UnlearnkitError("Choose the users to forget one way: --forget-users FRACTION (e.g. 0.2) or --users ID,ID.")
    if users is not None:
        chosen = list(dict.fromkeys(users))
        if not chosen:
            raise UnlearnkitError(f"--users names no user; give ids in {valid}, e.g. --users 3,17.")
        unknown = [user for user in chosen if isinstance(user, bool) or not isinstance(user, int) or user not in set(ids)]
        if unknown:
            raise UnlearnkitError(f"Unknown user id(s) {', '.join(map(str, unknown))}: the built-in data has {len(ids)} users, "
                                  f"ids {valid} (num_users sets how many).")
        forget = sorted(chosen)
        how = "chosen ids"
    else:
        if isinstance(forget_fraction, bool) or not isinstance(forget_fraction, (int, float)) or not 0 < forget_fraction < 1:
            raise UnlearnkitError(f"--forget-users must be a fraction in (0, 1), e.g. 0.2; got {forget_fraction}.")
        shuffled = list(ids)
        random.Random(seed).shuffle(shuffled)
        count = int(forget_fraction * len(ids))  # the reference: users[:int(0.2 * n)]
        if count == 0:
            raise UnlearnkitError(f"--forget-users {forget_fraction} of {len(ids)} users forgets nobody; raise it to at least "
                                  f"{1 / len(ids):.3g} or name users with --users.")
        forget = sorted(shuffled[:count])
        how = f"the first {forget_fraction:g} of the users shuffled with seed {seed}"
    retain = [user for user in ids if user not in set(forget)]
    if not retain:
        raise UnlearnkitError(f"Forgetting {len(forget)} of {len(ids)} users leaves no retained user: the retain set and the "
                              "test set (retained users' held-out rows) would be empty. Forget fewer users.")
    return UserSplit(tuple(forget), tuple(retain), how)


def parse_user_ids(text: str) -> list[int]:
    """``"3,17"`` -> [3, 17]; anything but whole numbers is refused."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise UnlearnkitError(f"--users must list user ids separated by commas, e.g. 3,17; got {text!r}.")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise UnlearnkitError(f"--users must list whole-number user ids separated by commas, e.g. 3,17; got {text!r}.") from None


def partition(dataset: RecDataset, split: UserSplit) -> dict[str, list[dict]]:
    """The rows by role: ``forget`` (D_f: the forgotten users' training rows), ``retain`` (D_r), ``test`` (retained users'
    held-out rows), and ``forget_heldout`` (the forgotten users' held-out rows, never trained on by any model)."""
    forget = set(split.forget)
    return {
        "forget": [row for row in dataset.train_rows if row["user"] in forget],
        "retain": [row for row in dataset.train_rows if row["user"] not in forget],
        "test": [row for row in dataset.heldout_rows if row["user"] not in forget],
        "forget_heldout": [row for row in dataset.heldout_rows if row["user"] in forget],
    }
