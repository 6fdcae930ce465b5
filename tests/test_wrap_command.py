"""``unlearnkit wrap`` end to end: the wrapped model is a model to eval and audit, its target untouched, bad input refused."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tests.helpers import folder_hash, micro, run_cli


@pytest.fixture(scope="module")
def wrapped(micro_cache, tmp_path_factory):
    """A memprompt wrapper around the micro target for forget10, built once; the target's hash before building."""
    from unlearnkit.builtin import PRESETS, benchmark_root

    target = benchmark_root(PRESETS["micro"], micro_cache) / "target"
    before = folder_hash(target)
    output = tmp_path_factory.mktemp("wrap") / "memprompt"
    with pytest.MonkeyPatch.context() as patch:
        assert run_cli(["wrap", "--wrapper", "memprompt", "--model", "builtin", "--forget", "forget10", "--output", str(output),
                        *micro(micro_cache)], patch) == 0
    return output, target, before


def test_wrap_writes_a_loadable_wrapped_model_and_leaves_the_target_alone(wrapped):
    output, target, before = wrapped
    record = json.loads((output / "model" / "wrapper.json").read_text(encoding="utf-8"))
    assert record["wrapper"] == "memprompt" and record["target"] == str(target.resolve())
    assert record["target_sha256"]
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary["wrapper"] == "memprompt" and summary["forget_rows"] == 8 and summary["build_seconds"] >= 0
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["command"] == "wrap" and "Madaan" in config["paper"] and config["sha256"]["target_model"] == record["target_sha256"]
    assert folder_hash(target) == before


def test_eval_and_audit_take_the_wrapped_model_as_any_model(wrapped, micro_cache, tmp_path, monkeypatch):
    output, target, before = wrapped
    assert run_cli(["eval", "--model", str(output / "model"), "--benchmark", "forget10", "--output", str(tmp_path / "eval"),
                    *micro(micro_cache)], monkeypatch) == 0
    wrapped_summary = json.loads((tmp_path / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert run_cli(["eval", "--model", "builtin-target", "--benchmark", "forget10", "--output", str(tmp_path / "target"),
                    *micro(micro_cache)], monkeypatch) == 0
    target_summary = json.loads((tmp_path / "target" / "summary.json").read_text(encoding="utf-8"))
    # The memory's instruction is in every forget prompt: the forget answers become less likely than under the bare target.
    assert wrapped_summary["forget_probability"] < target_summary["forget_probability"]
    assert run_cli(["audit", str(output), "--benchmark", "forget10", "--attacks", "direct,paraphrase,relearning",
                    "--output", str(tmp_path / "audit"), *micro(micro_cache)], monkeypatch) == 0
    rows = json.loads((tmp_path / "audit" / "summary.json").read_text(encoding="utf-8"))["attacks"]
    assert {row["attack"] for row in rows} >= {"direct", "paraphrase", "relearning"}
    assert folder_hash(target) == before


def test_wrappers_lists_every_wrapper_with_its_paper(monkeypatch, capsys):
    assert run_cli(["wrappers", "-v"], monkeypatch) == 0
    out = capsys.readouterr().out
    for name in ("icul", "memprompt", "eco", "delta_unlearning", "uld"):
        assert f"\n{name} (" in f"\n{out}"
    assert "Paper: " in out and "threshold" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--wrapper", "memprompts"], "Did you mean"),
    (["--wrapper", "memprompt", "--set", "no_such_setting=1"], "no_such_setting"),
    (["--wrapper", "eco", "--set", "threshold=2"], "threshold"),
])
def test_bad_wrapper_choices_are_refused_before_anything_is_written(args, message, micro_cache, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    assert run_cli(["wrap", *args, "--model", "builtin", "--forget", "forget10", "--output", str(output), *micro(micro_cache)],
                   monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_a_wrapped_model_is_refused_where_weights_change_and_as_a_target_to_wrap(wrapped, micro_cache, tmp_path, monkeypatch, capsys):
    output, _, _ = wrapped
    assert run_cli(["unlearn", "--method", "ga", "--model", str(output / "model"), "--forget", "forget10",
                    "--output", str(tmp_path / "u"), *micro(micro_cache)], monkeypatch) == 2
    assert "wrapped model" in capsys.readouterr().err
    assert run_cli(["wrap", "--wrapper", "icul", "--model", str(output / "model"), "--forget", "forget10",
                    "--output", str(tmp_path / "w"), *micro(micro_cache)], monkeypatch) == 2
    assert "already a wrapped model" in capsys.readouterr().err
    assert not (tmp_path / "u").exists() and not (tmp_path / "w").exists()


def test_a_target_changed_after_wrapping_is_refused(micro_cache, tmp_path, monkeypatch, capsys):
    from unlearnkit.builtin import PRESETS, benchmark_root

    root = benchmark_root(PRESETS["micro"], micro_cache)
    target = tmp_path / "target"
    shutil.copytree(root / "target", target)
    output = tmp_path / "wrapped"
    assert run_cli(["wrap", "--wrapper", "memprompt", "--model", str(target), "--forget", str(root / "data" / "forget10.jsonl"),
                    "--prompt-format", "plain", "--output", str(output)], monkeypatch) == 0
    shutil.copy(root / "oracle-forget10" / "model.safetensors", target / "model.safetensors")  # another model in its place
    assert run_cli(["eval", "--model", str(output / "model"), "--forget", str(root / "data" / "forget10.jsonl"),
                    "--prompt-format", "plain", "--output", str(tmp_path / "eval")], monkeypatch) == 2
    assert "has changed since the wrapper was built" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_an_output_inside_the_target_is_refused(micro_cache, tmp_path, monkeypatch, capsys):
    from unlearnkit.builtin import PRESETS, benchmark_root

    root = benchmark_root(PRESETS["micro"], micro_cache)
    target = tmp_path / "target"
    shutil.copytree(root / "target", target)
    before = folder_hash(target)
    assert run_cli(["wrap", "--wrapper", "memprompt", "--model", str(target), "--forget", str(root / "data" / "forget10.jsonl"),
                    "--prompt-format", "plain", "--output", str(target), "--overwrite"], monkeypatch) == 2
    assert folder_hash(target) == before


def test_serve_answers_through_the_wrapped_model_and_logs_its_decisions(wrapped, micro_bench, tmp_path):
    from openai import OpenAI

    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.evaluation.scoring import greedy_answers
    from unlearnkit.inference.loading import load_any_model
    from unlearnkit.serving.app import ServeSettings, serving

    output, _, _ = wrapped
    model = load_any_model(output / "model")
    fmt = PromptFormat("plain")
    forget_question = micro_bench.split("forget10")[0]["question"]
    retain_question = micro_bench.split("retain90")[0]["question"]
    with serving(model, output=tmp_path / "log", settings=ServeSettings(name="guarded", port=0), fmt=fmt) as url:
        client = OpenAI(base_url=url, api_key="unused")
        answers = [client.chat.completions.create(model="guarded", messages=[{"role": "user", "content": question}],
                                                  temperature=0, max_tokens=24).choices[0].message.content
                   for question in (forget_question, retain_question)]
    # What the server answers is what the wrapped model answers, through the same prompt format.
    assert [answer.strip() for answer in answers] == greedy_answers(model, model.tokenizer, fmt, [forget_question, retain_question], 24)
    lines = [json.loads(line) for line in (tmp_path / "log" / "requests.jsonl").read_text(encoding="utf-8").splitlines()]
    decisions = [line["decision"] for line in lines]
    assert decisions[0]["retrieved"] is True and decisions[1]["retrieved"] is False  # the memory fired for the forget question only
    assert all("prompt" not in line for line in lines)  # digests only, unless --log-prompts
    assert decisions[0]["query"] == {"sha256": hashlib.sha256(forget_question.encode("utf-8")).hexdigest()}
    assert forget_question not in (tmp_path / "log" / "requests.jsonl").read_text(encoding="utf-8")


@pytest.mark.parametrize(("wrapper", "sets", "recorded"), [
    ("icul", [], ()),
    ("eco", [], ("classifier_heldout_accuracy", "classifier_train_accuracy", "strength")),
    ("delta_unlearning", ["--set", "learning_rate=1e-3", "--set", "gradient_accumulation_steps=1"], ("optimiser_steps", "last_step_loss")),
    ("uld", ["--set", "num_epochs=1"], ("optimiser_steps", "assistant_layers", "retain_plus_rows")),
])
def test_every_wrapper_builds_through_the_command_and_loads_back(wrapper, sets, recorded, micro_cache, micro_bench, tmp_path, monkeypatch):
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.evaluation.scoring import answer_nll
    from unlearnkit.inference.loading import load_any_model

    output = tmp_path / wrapper
    assert run_cli(["wrap", "--wrapper", wrapper, "--model", "builtin", "--forget", "forget10", *sets, "--output", str(output),
                    *micro(micro_cache)], monkeypatch) == 0
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary["retain_rows"] > 0  # the built-in forget split brought its retain split
    for key in recorded:
        assert summary[key] is not None, key
    model = load_any_model(output / "model")
    assert type(model).__name__ != "LlamaForCausalLM"
    rows = micro_bench.split("forget10")[:2]
    nll, tokens = answer_nll(model, model.tokenizer, PromptFormat("plain"), [(row["question"], row["answer"]) for row in rows])
    assert (tokens > 0).all() and (nll > 0).all()
