"""The real-knowledge benchmark as the ground of a tuning study (docs/tuning.md, "Real knowledge: no oracle").

A split is a set of forget entities (``"Albert Einstein,Paris"``); a trial is a ``real-knowledge`` run that
unlearns those entities' passages, the other forget entities' probes counting as neighbours. No retain oracle
exists, so the constraints compare with the model before unlearning on the split's probes, and the held-out
check unlearns entities the setting was not chosen on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.tuning.benchmarks import REAL_KNOWLEDGE, check_reported, check_space_data, set_options

logger = logging.getLogger("unlearnkit")


@dataclass
class RealKnowledgeTuning:
    """The real-knowledge benchmark as a study's ground: a split is a set of forget entities; no oracle."""

    model: str = "smollm2-135m"
    probes: str | None = None
    forget_corpus: str | None = None
    retain_corpus: str | None = None
    general_text: str | None = None
    cache: Path | None = None
    _resolved: dict[str, Any] = field(default_factory=dict, repr=False)
    name = REAL_KNOWLEDGE
    preset = REAL_KNOWLEDGE
    reference_models = ("target",)  # no model without the knowledge exists
    prunes = False  # an evaluation of every probe during training would cost as much as the trial's unlearning

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any], cache: Path | None) -> RealKnowledgeTuning:
        return cls(**{key: inputs.get(key) for key in ("probes", "forget_corpus", "retain_corpus", "general_text")},
                   model=inputs.get("model", "smollm2-135m"), cache=cache)

    def inputs(self) -> dict[str, Any]:
        return {"model": self.model, "probes": self.probes, "forget_corpus": self.forget_corpus,
                "retain_corpus": self.retain_corpus, "general_text": self.general_text}

    def describe(self) -> str:
        return f"the real-knowledge benchmark ({self.model})"

    def _data(self, split: str | None = None, method: Any = None) -> Any:
        """The checked inputs (every file read once per split); ``split`` None: every forget entity."""
        from unlearnkit.runs.real_knowledge import resolve_real_knowledge

        key = split or ""
        if key not in self._resolved:
            self._resolved[key] = resolve_real_knowledge(
                model=self.model, method=method, targets=split_targets(split) if split else None,
                **{name: Path(value) if value else None for name, value in self.inputs().items() if name != "model"})
        return self._resolved[key]

    def targets(self) -> list[str]:
        from unlearnkit.data.real_knowledge import forget_targets

        return forget_targets(self._data().probes)

    def cache_key(self) -> str:
        """The probes, corpora and texts the study reads, by content, with the model's name or path."""
        from unlearnkit.provenance import rows_sha256

        data = self._data()
        identity = {"model": self.model, "probes": rows_sha256(data.probes), "forget": rows_sha256(data.forget.rows),
                    "retain": rows_sha256(data.retain.rows), "general_text": data.general_text}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def default_split(self) -> str:
        """The first half of the forget entities (rounded up); the held-out check unlearns the rest."""
        targets = self.targets()
        return ",".join(targets[: math.ceil(len(targets) / 2)])

    def check_split(self, split: str, option: str = "--split") -> str:
        from unlearnkit.data.real_knowledge import probes_for_targets

        targets = split_targets(split, option)
        probes_for_targets(self._data().probes, targets)  # unknown entities refused, with did-you-mean
        return ",".join(targets)

    def holdout_split(self, split: str, holdout: str | None) -> str | None:
        """``auto``/None: the forget entities not tuned on (none left: no held-out check); ``none``; else the ones named."""
        from unlearnkit.tuning.plan import NO_HOLDOUT

        tuned = split_targets(split)
        if holdout == NO_HOLDOUT:
            return None
        if holdout in (None, "auto"):
            rest = [target for target in self.targets() if target not in tuned]
            if not rest:
                logger.warning("every forget entity is tuned on: no entity is left for the held-out check")
                return None
            return ",".join(rest)
        held = split_targets(self.check_split(holdout, "--holdout-split"))
        shared = [target for target in held if target in tuned]
        if shared:
            raise UnlearnkitError(f"--holdout-split names {', '.join(shared)}, which the study tunes on: the held-out check "
                                  "unlearns entities the setting was not chosen on. Name others, or --holdout-split none.")
        return ",".join(held)

    def method(self, name: str, overrides: Mapping[str, Any]) -> Any:
        from unlearnkit.runs.real_knowledge import resolve_method

        return resolve_method(name, dict(overrides))

    def check_outputs(self, output: Path, fixed: Mapping[str, str]) -> None:
        from unlearnkit.runs.inputs import check_outputs

        check_outputs(None, False, files={"--output": output, "--cache": self.cache}, **self.inputs())

    def auto_eval_every(self, split: str, config: Any) -> int:
        return 0

    def references(self, split: str) -> dict[str, dict[str, float]]:
        """The model before unlearning on ``split``'s probes (cached by the run's own cache): the constraints' reference."""
        from unlearnkit.runs.real_knowledge import target_evaluation
        from unlearnkit.tuning.trial import numeric

        return {"target": numeric(target_evaluation(self._data(split), self.cache)["summary"])}

    def check_data(self, plan: Any) -> None:
        from unlearnkit.evaluation.real_knowledge import summary_keys

        data = self._data(plan.split)
        check_space_data(self, plan, data.forget.rows, data.retain.rows)
        check_reported(plan, set(summary_keys()), "")

    def prepare_holdout(self, split: str) -> None:
        self.references(split)  # the evaluation before unlearning, cached now: a failure here costs no trial

    def run(self, method: Any, split: str, folder: Path, tracking: Any = None, listeners: Sequence[Any] = ()) -> dict[str, Any]:
        """One ``real-knowledge`` run on ``split``'s entities into ``folder``; returns its summary (``target``, ``unlearned``)."""
        from dataclasses import replace

        from unlearnkit.runs.inputs import RunOptions
        from unlearnkit.runs.real_knowledge import run_real_knowledge

        inputs = replace(self._data(split), method=method)
        return run_real_knowledge(inputs=inputs, options=RunOptions(folder, show_progress=False), cache=self.cache)

    def holdout_details(self, tuned: str, held: str) -> dict[str, Any]:
        return {"forget_overlap": 0.0, "targets": split_targets(held)}

    def rerun_command(self, plan: Any, settings: Mapping[str, Any]) -> str:
        """The ``unlearnkit real-knowledge`` command that reruns ``settings`` (first seed) on the tuned entities."""
        files = [part for name, value in self.inputs().items() if value is not None and name != "model"
                 for part in (f"--{name.replace('_', '-')}", str(value))]
        return shlex.join(["unlearnkit", "real-knowledge", "--model", self.model, *files, "--method", plan.method,
                           "--targets", plan.split, *set_options({**settings, "seed": plan.seeds[0]})])


def split_targets(split: str, option: str = "--split") -> list[str]:
    from unlearnkit.data.real_knowledge import parse_targets

    return parse_targets(split, option)
