"""``unlearnkit recommend``: E2URec's experiment on the built-in recommendation data (docs/e2urec.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, Sets


@app.command()
def recommend(
    output: Output,
    forget_users: Annotated[float | None, typer.Option(
        "--forget-users", help="Forget this fraction of the users, the first of them once shuffled (default 0.2, as the paper).")] = None,
    users: Annotated[str | None, typer.Option(
        "--users", help="Forget these user ids instead, comma-separated (e.g. 3,17); ids run from 0 to num_users - 1.")] = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Unlearn users from an LLM recommender with E2URec, against retraining and NPO, on built-in synthetic data."""
    from unlearnkit.recommendation.data import parse_user_ids
    from unlearnkit.runs.inputs import parse_sets
    from unlearnkit.runs.recommend import resolve_recommend, run_recommend

    chosen = parse_user_ids(users) if users is not None else None
    inputs = resolve_recommend(parse_sets(sets), forget_users, chosen)
    summary = run_recommend(inputs=inputs, output=Path(output), overwrite=overwrite, show_progress=show_progress())
    before, after = summary["forget_distance_to_oracle"]["before"], summary["forget_distance_to_oracle"]["e2urec"]
    typer.echo(f"E2URec on {len(summary['users']['forgotten'])} forgotten user(s): D_f distance to the retrained model "
               f"{before['jsd']:.4f} -> {after['jsd']:.4f} (symmetrised KL); test AUC "
               f"{_auc(summary['models']['original']['test']['auc'])} -> {_auc(summary['models']['e2urec']['test']['auc'])}. "
               f"Results: {output}")


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
