"""``check-data``: the checks of :mod:`unlearnkit.data.checks` on a user's QA data, with the model's checks when one is given.

Nothing is written: the findings are printed (or returned as JSON), each naming its
rows and what it does to which metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.data.checks import Finding, check_rows, target_prefers_perturbed, too_long
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.qa import TRUTH_RATIO_FIELDS, has_fields
from unlearnkit.runs.inputs import Builtin, DataChoice, resolve_data, resolve_model


@dataclass
class DataCheck:
    """What ``check-data`` found, and which checks ran on what."""

    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # data set -> rows
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it did not run

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "skipped": self.skipped, "findings": [finding.to_json() for finding in self.findings]}


def run_check_data(
    source: str,
    *,
    retain: str | None = None,
    model: str | None = None,
    prompt_format: PromptFormat = PromptFormat(),
    builtin: Builtin | None = None,
    max_length: int = 256,
    batch_size: int = 64,
    trust_remote_code: bool = False,
) -> DataCheck:
    """Check ``source`` (and ``retain``): rows alone, then with ``model`` their length and the model's truth ratios.

    ``max_length``: the tokens per example the methods keep (their ``max_length``,
    256 by default); the model's context is the limit when it is smaller.
    """
    data = resolve_data(source, "data", builtin)
    retained = resolve_data(retain, "retain", builtin) if retain else None
    sets = [data, *([retained] if retained else [])]
    report = DataCheck(checked={_where(choice): len(choice.rows) for choice in sets})
    report.findings += check_rows(data.rows, _where(data), retained.rows if retained else None)
    if retained:
        report.findings += check_rows(retained.rows, _where(retained))
    with_truth = [choice for choice in sets if has_fields(choice.rows, TRUTH_RATIO_FIELDS, _where(choice))]
    if not with_truth:
        report.skipped["paraphrase and perturbed answers"] = "no paraphrased_answer/perturbed_answer fields: no truth ratio to check"
    if model is None:
        report.skipped["too_long, target_prefers_perturbed"] = "need --model"
        return report
    _check_with_model(report, sets, with_truth, model, prompt_format, builtin, max_length, batch_size, trust_remote_code)
    return report


def _check_with_model(
    report: DataCheck, sets: Sequence[DataChoice], with_truth: Sequence[DataChoice], model: str, prompt_format: PromptFormat,
    builtin: Builtin | None, max_length: int, batch_size: int, trust_remote_code: bool,
) -> None:
    from unlearnkit.evaluation import metrics
    from unlearnkit.evaluation.evaluator import split_truth_ratio_nll, truth_ratio_pairs
    from unlearnkit.evaluation.scoring import answer_avg_nll
    from unlearnkit.modeling import load_model, load_tokenizer

    chosen = resolve_model(model, prompt_format, builtin)
    network = load_model(chosen.source, trust_remote_code)
    tokenizer = load_tokenizer(chosen.source, trust_remote_code)
    chosen.fmt.check(tokenizer)
    context = getattr(network.config, "max_position_embeddings", None)
    limit = min(max_length, context) if context else max_length
    for choice in sets:
        pairs = chosen.fmt.qa_ids_many(tokenizer, [(row["question"], row["answer"]) for row in choice.rows])
        report.findings += too_long([len(prompt) + len(answer) for prompt, answer in pairs], limit, _where(choice))
    # The retain set is what the model should know and keep; without one, the data itself (it was trained on it too).
    rows_for_preference = next((choice for choice in reversed(with_truth)), None)
    if rows_for_preference is None:
        report.skipped["target_prefers_perturbed"] = "no paraphrased_answer/perturbed_answer fields"
        return
    rows = rows_for_preference.rows
    network.eval()
    nll = answer_avg_nll(network, tokenizer, chosen.fmt, truth_ratio_pairs(rows, "paraphrased_answer"), batch_size)
    ratios = metrics.truth_ratio(*split_truth_ratio_nll(nll, len(rows)))
    report.findings += target_prefers_perturbed(ratios.tolist(), _where(rows_for_preference))


def _where(choice: DataChoice) -> str:
    return f"{'' if choice.role == 'data' else choice.role + ' '}data ({choice.source})"
