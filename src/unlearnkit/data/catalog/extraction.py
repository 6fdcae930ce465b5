"""The Training Data Extraction Challenge: 50-token prefixes and suffixes of memorised Pile examples.

Carlini et al., "Extracting Training Data from Large Language Models", USENIX Security 2021
(arXiv 2012.07805), made a benchmark by the challenge repository google-research/lm-extraction-benchmark
(SaTML 2023), whose ``datasets/`` folder holds ``SPLIT_prefix.npy`` and ``SPLIT_suffix.npy``: 2-D
uint16 arrays of GPT-Neo (GPT-2 BPE) token ids, 50 per row (its load_dataset.py slices tokens
100:150 and 150:200 of each example; ``SPLIT_preprefix.npy`` holds the 100 before). The test
split's suffixes were withheld. Knowledge unlearning (Jang et al., ACL 2023) forgets these examples.

Only plain numeric arrays are read: ``numpy.load(..., allow_pickle=False)`` never unpickles.
"""

from __future__ import annotations

from pathlib import Path

from unlearnkit.data.catalog.spec import TOKENS, Config, DatasetSpec, Paper, register
from unlearnkit.errors import UnlearnkitError

GPT2_VOCAB_SIZE = 50257  # GPT-Neo uses GPT-2's byte-level BPE vocabulary
TOKENS_PER_PART = 50


def read_tdec(path: Path, config: str, split: str) -> list[dict]:
    """Rows {prefix_ids, suffix_ids (absent for the test split), index} from DIR or DIR/datasets."""
    folder = path / "datasets" if (path / "datasets" / f"{split}_prefix.npy").is_file() else path
    prefix_path, suffix_path = folder / f"{split}_prefix.npy", folder / f"{split}_suffix.npy"
    if not prefix_path.is_file():
        raise UnlearnkitError(f"No {prefix_path.name} in {folder} (nor in {path / 'datasets'}): the {split} split needs "
                              f"{split}_prefix.npy{'' if split == 'test' else f' and {split}_suffix.npy'}.")
    prefixes = _token_array(prefix_path)
    suffixes = None
    if split != "test" or suffix_path.is_file():
        if not suffix_path.is_file():
            raise UnlearnkitError(f"No {suffix_path.name} in {folder}: the {split} split needs it beside {prefix_path.name}.")
        suffixes = _token_array(suffix_path)
        if len(suffixes) != len(prefixes):
            raise UnlearnkitError(f"{prefix_path.name} has {len(prefixes)} rows but {suffix_path.name} has {len(suffixes)}; "
                                  f"they must pair row by row.")
    return [{"prefix_ids": prefixes[i].tolist(), **({"suffix_ids": suffixes[i].tolist()} if suffixes is not None else {}),
             "index": i} for i in range(len(prefixes))]


def _token_array(path: Path):  # returns a numpy array (numpy is imported lazily)
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise UnlearnkitError(f"{path} cannot be read as a plain numeric array ({error}); object arrays are never "
                              f"unpickled. Save the token ids as an integer array (numpy.save with dtype uint16).") from None
    except OSError as error:
        raise UnlearnkitError(f"{path} is not a .npy file numpy can read: {error}.") from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise UnlearnkitError(f"{path} must hold a 2-D array (rows x {TOKENS_PER_PART} token ids); it has shape {array.shape}.")
    if array.dtype.kind not in "iu":
        raise UnlearnkitError(f"{path} must hold integer token ids; its dtype is {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() >= GPT2_VOCAB_SIZE):
        raise UnlearnkitError(f"{path} holds token ids outside 0..{GPT2_VOCAB_SIZE - 1} (min {array.min()}, max "
                              f"{array.max()}): they are not GPT-Neo/GPT-2 tokens.")
    return array


def tdec_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    return rows


register(DatasetSpec(
    name="tdec",
    title="Training Data Extraction Challenge: token-id prefixes and suffixes of memorised Pile examples",
    paper=Paper("Extracting Training Data from Large Language Models", "Carlini et al.", "USENIX Security", 2021, "2012.07805"),
    licence="Apache-2.0 (the challenge repository)",
    hub_id=None,
    configs={"default": Config(("train", "val", "test"))},
    schema={"prefix_ids": "list[int]", "index": "int"},
    optional={"suffix_ids": "list[int]"},
    row_form=TOKENS,
    use="private/memorised-data track: forget and test extraction of memorised sequences (GPT-Neo tokenizer)",
    local_copy="Clone google-research/lm-extraction-benchmark and pass the repository or its datasets/ folder as @DIR: "
               "SPLIT_prefix.npy and SPLIT_suffix.npy (uint16, 50 GPT-Neo token ids per row; test has no suffixes). "
               "train_prefix.npy/train_suffix.npy are built by its load_dataset.py from a local copy of the Pile.",
    convert=tdec_rows,
    example={"prefix_ids": [464, 3290, "... 50 ids"], "suffix_ids": ["... 50 ids"], "index": 0},
    read_local=read_tdec,
))
