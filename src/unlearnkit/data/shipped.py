"""Files shipped in the package (``unlearnkit/data/resources``): real-knowledge splits and refusal answers."""

from __future__ import annotations

from importlib import resources


def resource_text(filename: str) -> str:
    """The text of a file shipped in the package's resources folder."""
    return resources.files("unlearnkit.data").joinpath("resources", filename).read_text(encoding="utf-8")


def load_idk_answers() -> list[str]:
    """TOFU's 100 refusal answers ("I'm not sure.", ...), the targets of the IDK-style methods.

    The list is TOFU's data/idontknow.jsonl (MIT License; see ``tofu_idontknow.LICENSE``
    next to it), read as TOFU reads it: one answer per line, stripped.
    """
    return [line.strip() for line in resource_text("tofu_idontknow.txt").splitlines() if line.strip()]
