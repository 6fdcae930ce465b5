"""The Pile and its subsets, selected by ``meta.pile_set_name``.

Gao et al., "The Pile: An 800GB Dataset of Diverse Text for Language Modeling", arXiv 2101.00027, 2020.
Files are JSON Lines (``val.jsonl.zst``, ``test.jsonl.zst``, ``train/NN.jsonl.zst``) of
``{"text": ..., "meta": {"pile_set_name": ...}}``. Zstandard files need the optional ``zstandard``
package (not a dependency of unlearnkit); decompressed ``.jsonl`` files are read as they are.
The config names a subset (``pile:enron-emails/val@DIR``) or ``all``. The hub copy read without
``@DIR`` is ``monology/pile-uncopyrighted``, the Pile without its copyrighted subsets.
"""

from __future__ import annotations

import re

from unlearnkit.data.catalog.spec import TEXT, Config, DatasetSpec, Paper, register

PILE_SET_NAMES = ("Pile-CC", "PubMed Central", "Books3", "OpenWebText2", "ArXiv", "Github", "FreeLaw", "StackExchange",
                  "USPTO Backgrounds", "PubMed Abstracts", "Gutenberg (PG-19)", "OpenSubtitles", "Wikipedia (en)",
                  "DM Mathematics", "Ubuntu IRC", "BookCorpus2", "EuroParl", "HackerNews", "YoutubeSubtitles", "PhilPapers",
                  "NIH ExPorter", "Enron Emails")


def slug(set_name: str) -> str:
    """A config name for a Pile subset: 'Gutenberg (PG-19)' -> 'gutenberg-pg-19'."""
    return re.sub(r"[^a-z0-9]+", "-", set_name.lower()).strip("-")


SUBSETS = {slug(name): name for name in PILE_SET_NAMES}


def pile_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    wanted = SUBSETS.get(config)
    return [{"text": row["text"], "pile_set_name": row["meta"]["pile_set_name"]}
            for row in rows if wanted is None or row["meta"]["pile_set_name"] == wanted]


_SPLITS = ("train", "val", "test")
register(DatasetSpec(
    name="pile",
    title="The Pile (22 subsets; filter one by its pile_set_name)",
    paper=Paper("The Pile: An 800GB Dataset of Diverse Text for Language Modeling", "Gao et al.", "arXiv", 2020, "2101.00027"),
    licence="per subset (see the Pile's datasheet); the hub copy monology/pile-uncopyrighted is marked 'other'",
    hub_id="monology/pile-uncopyrighted",
    configs={name: Config(_SPLITS, hub_splits={"val": "validation"}) for name in ("all", *SUBSETS)},
    schema={"text": "str", "meta": "object", "meta.pile_set_name": "str"},
    row_form=TEXT,
    use="pretraining-data forget/retain texts (e.g. a subset to forget, others to retain); memorisation tests",
    local_copy="Put val.jsonl(.zst), test.jsonl(.zst) and/or train/NN.jsonl(.zst) of a Pile copy in DIR; .zst needs "
               "`pip install zstandard` (or decompress with `zstd -d`).",
    convert=pile_rows,
    example={"text": "Message-ID: ...", "pile_set_name": "Enron Emails"},
    unverified=("the hub copy's split names (we ask for train/validation/test) and which subsets it dropped",),
))
