"""Files shipped in the package (``unlearnkit/data/resources``): real-knowledge splits and refusal answers."""

from __future__ import annotations

from importlib import resources


def resource_text(filename: str) -> str:
    """The text of a file shipped in the package's resources folder."""
    return resources.files("unlearnkit.data").joinpath("resources", filename).read_text(encoding="utf-8")


def load_idk_answers() -> list[str]:
    """The shipped refusal answers ("I don't know." and variants), one per line: IDK-style methods' targets."""
    return [line.strip() for line in resource_text("idontknow.txt").splitlines() if line.strip()]
