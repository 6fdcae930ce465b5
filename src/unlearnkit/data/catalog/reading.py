"""Reading a catalog source's raw rows: a local copy (JSON, JSON Lines, Parquet, CSV, zstd JSON Lines) or the hub.

The hub is asked once (no retry loop): a gated dataset without access, an unreachable hub and a
missing dataset each become one :class:`UnlearnkitError` saying what to do, ``@DIR`` included.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from unlearnkit.data.catalog.source import CatalogSource
from unlearnkit.errors import UnlearnkitError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.zst")
Chunk = tuple[str, list]  # (where the rows came from, for messages; the rows)


def read_rows(source: CatalogSource) -> list[Chunk]:
    """The raw rows of ``source``, file by file (or one chunk from the hub)."""
    if source.local_path is None:
        return [(f"{source} (hub {hub_id(source)})", read_hub(source))]
    spec = source.spec
    if spec.read_local is not None:
        path = source.local_path
        if not path.exists():
            raise UnlearnkitError(f"{path} does not exist; pass the folder or file holding your copy of {spec.name}. "
                                  f"{spec.local_copy}")
        return [(f"{source}", spec.read_local(path, source.config, source.split))]
    return [(f"{path} ({source})", read_file(path)) for path in local_files(source)]


def local_files(source: CatalogSource) -> list[Path]:
    """The files of ``source`` in its local copy; raises naming every path looked for."""
    root = Path(source.local_path or ".")
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UnlearnkitError(f"The folder {root} does not exist. {source.spec.local_copy}")
    config = source.config_spec
    looked: list[str] = []
    for pattern in config.local_stems:
        stem = root / pattern.format(split=source.split, config=source.config, hub_config=config.hub_config or "")
        for suffix in LOCAL_SUFFIXES:
            path = stem.parent / (stem.name + suffix)
            looked.append(str(path.relative_to(root)))
            if path.is_file():
                return [path]
        shards = sorted(stem.parent.glob(f"{stem.name}-*.parquet"))  # the hub's shard names: SPLIT-00000-of-00002.parquet
        if shards:
            return shards
        if stem.is_dir():  # a folder of shards (the Pile's train/00.jsonl.zst ...)
            files = sorted(p for p in stem.iterdir() if p.is_file() and p.name.endswith(LOCAL_SUFFIXES))
            if files:
                return files
        looked.append(f"{stem.relative_to(root)}-*.parquet")
    name = f"{source.dataset}:{source.config}/{source.split}"
    raise UnlearnkitError(f"No file for {name} in {root}: looked for {', '.join(looked)}. {source.spec.local_copy}")


def read_file(path: Path) -> list:
    """Rows of one local file; a file that cannot be parsed raises naming it (and the line, for JSON Lines)."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if name.endswith(".zst"):
            return _json_lines(_zstd_text(path), path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UnlearnkitError(f"Could not read {path}: {error}") from None
    if name.endswith(".csv"):
        csv.field_size_limit(2**31 - 1)  # a CSV cell may hold a whole e-mail
        return list(csv.DictReader(io.StringIO(text)))
    return json_rows(text, path)


def json_rows(text: str, path: Path) -> list:
    """The rows of a JSON file's ``text``: a JSON list, an object whose ``data`` is one, or JSON Lines (also under a
    ``.json`` name, as some hub repositories store them)."""
    if path.name.lower().endswith(".jsonl"):
        return _json_lines(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(text, path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UnlearnkitError(f"{path} must hold a JSON list of rows (or JSON Lines), not a {type(data).__name__}.")
    return data


def _json_lines(text: str, path: Path) -> list:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UnlearnkitError(f"Line {number} of {path} is not valid JSON ({error}).") from None
    return rows


def _zstd_text(path: Path) -> str:
    try:
        import zstandard
    except ImportError:
        raise UnlearnkitError(f"{path} is zstd-compressed and the optional zstandard package is not installed: "
                              f"`pip install zstandard`, or decompress it first (`zstd -d {path}`) and pass the .jsonl.") from None
    with path.open("rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle).read().decode("utf-8")


def hub_id(source: CatalogSource) -> str:
    return source.config_spec.hub_id or source.spec.hub_id or ""


def read_hub(source: CatalogSource) -> list[dict]:
    """Rows of ``source`` from the hub through ``datasets``, asked once."""
    from datasets import load_dataset

    config, repo = source.config_spec, hub_id(source)
    try:
        if config.hub_data_files:
            dataset = load_dataset(repo, data_files=config.hub_data_files, split="train")
        else:
            split = (config.hub_splits or {}).get(source.split, source.split)
            dataset = load_dataset(repo, config.hub_config, split=split)
    except Exception as error:  # noqa: BLE001 - the hub raises many types; hub_error sorts out what they mean
        raise hub_error(error, source) from None
    return [dict(row) for row in dataset]


def hub_error(error: BaseException, source: CatalogSource) -> UnlearnkitError:
    """One clear message for a failed hub load: gated without access, hub unreachable, or not found."""
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled

    repo, chain = hub_id(source), _chain(error)
    local = f"{source.dataset}:{source.config}/{source.split}@DIR"
    if any(isinstance(e, GatedRepoError) or "gated" in str(e).lower() for e in chain):
        return UnlearnkitError(
            f"{repo} is a gated dataset and this account has no access to it. Request access on its hub page "
            f"(https://huggingface.co/datasets/{repo}), log in with `hf auth login` (or set HF_TOKEN), and run again; "
            f"or pass a local copy: {local}.")
    if any(isinstance(e, ConnectionError | OfflineModeIsEnabled | TimeoutError) for e in chain):
        return UnlearnkitError(f"Could not reach the hub for {repo} (offline, or HF_HUB_OFFLINE is set). "
                               f"Connect and run again, or pass a local copy: {local}.")
    return UnlearnkitError(f"Could not load {source} from the hub ({repo}): {error}. Pass a local copy instead: {local}.")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
