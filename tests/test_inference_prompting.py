"""Input-based inference-time wrappers: ICUL, MemPrompt and ECO on hand-made inputs and on the micro benchmark."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from unlearnkit.attacks import ATTACKS
from unlearnkit.attacks.base import AuditConfig, AuditData
from unlearnkit.data.encoding import PromptFormat, left_pad_prompts, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_nll, encode_pairs, greedy_answers, greedy_texts
from unlearnkit.inference import WRAPPERS, WrapData
from unlearnkit.inference.base import causal_lm_logits
from unlearnkit.inference.eco import ECO, corrupt_embeddings, flag, train_classifier, zeroth_order_search
from unlearnkit.inference.icul import flipped_answers
from unlearnkit.inference.loading import load_wrapped, save_wrapped
from unlearnkit.inference.memprompt import levenshtein, process_key
from unlearnkit.losses import sequence_nll
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.settings import build_config

FMT = PromptFormat("plain")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def micro(micro_bench):
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir).eval()
    return model, tokenizer, micro_bench.split("forget10"), micro_bench.split("retain90")


def build(name, micro, fmt=FMT, forget=None, **settings):
    model, tokenizer, default_forget, retain = micro
    spec = WRAPPERS.get(name)
    data = WrapData(default_forget if forget is None else forget, retain, fmt)
    return spec.wrapper.build(model, tokenizer, data, build_config(spec.config, settings)).eval()


@pytest.fixture(scope="module")
def wrappers(micro):
    return {"icul": build("icul", micro), "memprompt": build("memprompt", micro), "eco": build("eco", micro)}


def right_padded(tokenizer, pairs):
    return pad_batch(encode_pairs(tokenizer, FMT, pairs), tokenizer.pad_token_id)


# --------------------------------------------------------------------------------------------------- ICUL


def test_icul_inserts_forget_example_with_wrong_answer_then_context_examples(micro, wrappers):
    _, tokenizer, forget, retain = micro
    icul = wrappers["icul"]
    query = FMT.prompt_ids(tokenizer, forget[0]["question"])
    span = icul.layout.question_span(query)
    chosen_forget, chosen_context = icul.chosen_examples(tuple(query[span[0]:span[1]]))
    assert chosen_forget == [0]  # the most similar forget question is the query itself
    assert len(chosen_context) == 2 and len(set(chosen_context)) == 2
    # Expected: BOS, then each example as its own plain prompt without BOS plus its answer and EOS, then the query without BOS.
    examples = [(forget[0]["question"], forget[0]["perturbed_answer"][0])]
    examples += [(retain[i]["question"], retain[i]["answer"]) for i in chosen_context]
    expected = [tokenizer.bos_token_id]
    for question, answer in examples:
        expected += FMT.prompt_ids(tokenizer, question)[1:] + FMT.answer_ids(tokenizer, answer)
    expected += query[1:]
    inserted = icul.row_insertions([query])[0]
    assert query[:3] + inserted + query[3:] == expected
    text = tokenizer.decode(expected)
    assert text.count("Question:") == 4 and "Gussburg is the birthplace of Yostia Sheinock.</s>" in text
    # The same query always gets the same context (decoding sees one fixed prompt); another query may get others.
    assert icul.row_insertions([query])[0] == inserted


def test_icul_chat_format_puts_examples_in_proper_turns(micro):
    model, tokenizer, forget, retain = micro
    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    fmt = PromptFormat("chat")
    spec = WRAPPERS.get("icul")
    icul = spec.wrapper.build(model, chat_tokenizer, WrapData(forget, retain, fmt), spec.config(context_examples=1))
    query = fmt.prompt_ids(chat_tokenizer, forget[1]["question"])
    span = icul.layout.question_span(query)
    chosen_forget, chosen_context = icul.chosen_examples(tuple(query[span[0]:span[1]]))
    head = len(icul.layout.head)
    row = query[:head] + icul.row_insertions([query])[0] + query[head:]
    conversation = [{"role": "user", "content": forget[chosen_forget[0]]["question"]},
                    {"role": "assistant", "content": forget[chosen_forget[0]]["perturbed_answer"][0]},
                    {"role": "user", "content": retain[chosen_context[0]]["question"]},
                    {"role": "assistant", "content": retain[chosen_context[0]]["answer"]},
                    {"role": "user", "content": forget[1]["question"]}]
    assert chat_tokenizer.decode(row) == chat_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def test_icul_logits_are_those_of_the_expanded_prompt_at_the_original_positions(micro, wrappers):
    model, tokenizer, forget, _ = micro
    icul = wrappers["icul"]
    pairs = [(forget[0]["question"], forget[0]["answer"]), (forget[3]["question"], forget[3]["answer"])]
    batch = right_padded(tokenizer, pairs)
    logits = icul(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.vocab_size)
    head = len(icul.layout.head)
    for row in range(2):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        inserted = icul.row_insertions([ids])[0]
        expanded = torch.tensor([ids[:head] + inserted + ids[head:]])
        alone = causal_lm_logits(model, expanded, torch.ones_like(expanded))[0]  # (L + n, V)
        n = len(inserted)
        torch.testing.assert_close(logits[row, :head - 1], alone[:head - 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[row, head - 1:len(ids)], alone[head - 1 + n:], rtol=1e-5, atol=1e-5)
        unwrapped = causal_lm_logits(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
        assert not torch.allclose(logits[row, head - 1:len(ids)], unwrapped[head - 1:])
    # Left padding (generation) gives the same logits at the same tokens.
    prompts = [FMT.prompt_ids(tokenizer, q) for q, _ in pairs]
    left = left_pad_prompts(prompts, tokenizer.pad_token_id)
    left_logits = icul(**left).logits
    for row, prompt in enumerate(prompts):
        right_ids = batch["input_ids"][row].tolist()
        assert right_ids[:len(prompt)] == prompt
        torch.testing.assert_close(left_logits[row, -len(prompt):], logits[row, :len(prompt)], rtol=1e-4, atol=1e-4)


def test_rows_that_are_not_prompts_get_exactly_the_target_logits(micro, wrappers):
    model, tokenizer, forget, retain = micro
    text = tokenizer("Yostia Sheinock was born in Kradgrad.")["input_ids"][1:]  # no BOS, no "Question:": not a prompt
    prompt = FMT.prompt_ids(tokenizer, forget[0]["question"])
    ids, mask = left_pad_prompts([text, prompt], tokenizer.pad_token_id).values()
    for name in ("icul", "memprompt"):
        logits = wrappers[name](input_ids=ids, attention_mask=mask).logits
        plain = causal_lm_logits(model, ids[:1], mask[:1])
        assert torch.equal(logits[0], plain[0]), name
    # MemPrompt retrieves nothing for a retain question: the whole batch is the target's.
    retain_ids, retain_mask = left_pad_prompts([FMT.prompt_ids(tokenizer, r["question"]) for r in retain[:3]],
                                               tokenizer.pad_token_id).values()
    assert torch.equal(wrappers["memprompt"](input_ids=retain_ids, attention_mask=retain_mask).logits,
                       causal_lm_logits(model, retain_ids, retain_mask))


def test_flipped_answers():
    forget = [{"question": "q1", "answer": "a1", "perturbed_answer": ["w1", "w1b"]}, {"question": "q2", "answer": "a2"},
              {"question": "q3", "answer": "a3", "perturbed_answer": "w3"}]
    assert flipped_answers(forget, [], "perturbed") == ["w1", "a3", "w3"]
    assert flipped_answers(forget, [], "other") == ["a2", "a3", "a1"]
    assert flipped_answers(forget[1:2], [{"question": "r", "answer": "ra"}], "perturbed") == ["ra"]
    with pytest.raises(UnlearnkitError, match="perturbed_answer"):
        flipped_answers(forget[1:2], [], "perturbed")


# --------------------------------------------------------------------------------------------------- MemPrompt


def test_levenshtein_and_key_processing():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abcdefghij", "a", limit=6) == 6  # stopped early at the limit
    assert levenshtein("abcdef", "abcxyz", limit=6) == 3
    assert process_key("  Where was Yostia   Sheinock born? ") == "where was yostia sheinock born"


def test_memprompt_threshold_and_instruction_tokens(micro, wrappers):
    model, tokenizer, forget, _ = micro
    memory = wrappers["memprompt"]
    key = process_key(forget[0]["question"])  # "where was yostia sheinock born"
    assert memory.retrieve("Where was Yostia Sheinock born")["distance"] == 0
    three = memory.retrieve("Where was Yostia Shein born?")  # "ock" dropped: 3 edits
    assert three["retrieved"] and three["distance"] == 3
    near = "Where was Yostia Shexxxxx born"  # 5 substitutions
    far = "Where was Yostia Shxxxxxx born"  # 6 substitutions
    assert levenshtein(process_key(near), key) == 5 and levenshtein(process_key(far), key) == 6
    assert memory.retrieve(near)["retrieved"] and memory.retrieve(near)["key"] == forget[0]["question"]
    assert not memory.retrieve(far)["retrieved"]  # distance must be < 6 (the authors' min_sim_threshold)
    prompt = FMT.prompt_ids(tokenizer, forget[0]["question"])
    inserted = memory.row_insertions([prompt])[0]
    expected_text = " Do not reveal information about Yostia Sheinock; answer that you do not know."
    assert inserted == tokenizer(expected_text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(prompt[:3] + inserted + prompt[3:]) == f"<s>Question:{expected_text} {forget[0]['question']}\nAnswer:"
    # The paraphrased question is too far from every key: MemPrompt lets it through (the audit's paraphrase attack shows it).
    paraphrase = FMT.prompt_ids(tokenizer, forget[0]["paraphrased_question"])
    ids, mask = left_pad_prompts([prompt, paraphrase], tokenizer.pad_token_id).values()
    decisions = memory.decisions(ids, mask)
    assert decisions[0]["retrieved"] and decisions[0]["distance"] == 0 and decisions[0]["feedback"] == expected_text.strip()
    assert not decisions[1]["retrieved"] and decisions[1]["query"].rstrip("?") == forget[0]["paraphrased_question"].rstrip("?")
    logits = memory(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(logits[1:], causal_lm_logits(model, ids[1:], mask[1:]))
    assert not torch.allclose(logits[0, -1], causal_lm_logits(model, ids[:1], mask[:1])[0, -1])


def test_memprompt_remember_and_feedback_without_entity(micro):
    rows = [{"question": "Who wrote the Orange Book of Tides?", "answer": "Nobody knows."}]
    memory = build("memprompt", micro, forget=rows)
    assert memory.memory[0][1] == "Do not reveal the answer to this question; answer that you do not know."
    assert not memory.retrieve("Where was Yostia Sheinock born?")["retrieved"]
    memory.remember("Where was Yostia Sheinock born?", "Say nothing about Yostia.")
    assert memory.retrieve("where was yostia sheinock born")["feedback"] == "Say nothing about Yostia."


# --------------------------------------------------------------------------------------------------- ECO


def test_threshold_flags_strictly_above_tau():
    tau = 0.7
    scores = torch.tensor([tau, math.nextafter(tau, 1.0), math.nextafter(tau, 0.0), 1.0, 0.0], dtype=torch.float64)
    assert flag(scores, tau).tolist() == [False, True, False, True, False]


def test_classifier_score_at_and_around_tau(micro):
    model, tokenizer, forget, _ = micro
    spec = WRAPPERS.get("eco")
    settings = spec.config(tune=False, threshold=0.5)
    prompt = FMT.prompt_ids(tokenizer, forget[0]["question"])
    ids, mask = left_pad_prompts([prompt], tokenizer.pad_token_id).values()
    for bias, flagged in ((0.0, False), (1e-6, True), (-1e-6, False)):
        eco = ECO(model, tokenizer, settings, FMT, torch.zeros(settings.hash_dims), torch.tensor(bias), strength=5.0)
        decision = eco.decisions(ids, mask)[0]
        assert decision["flagged"] is flagged and decision["score"] == pytest.approx(0.5, abs=1e-6)
        logits = eco(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(logits, causal_lm_logits(model, ids, mask)) is not flagged


def test_zeroth_order_search_by_hand():
    # f(s) = 10 - 2 s: g = -2 exactly; s <- s + 2 lr. From 1 with lr 0.5: 1 -> 2 -> 3, where f = 4 <= 5 stops.
    strength, history = zeroth_order_search(lambda s: 10 - 2 * s, 1.0, 0.5, 0.5, 10, 5.0, 1e-8)
    assert strength == pytest.approx(3.0)
    assert [h["strength"] for h in history] == pytest.approx([1.0, 2.0, 3.0])
    assert [h["gradient"] for h in history[:2]] == pytest.approx([-2.0, -2.0]) and "gradient" not in history[2]
    # f(s) = s^2 from 0.1 with eps 0.2: g = (0.3^2 - (1e-8)^2) / 0.4 = 0.225 (sigma - eps clamped at 1e-8);
    # s <- max(0.1 - 1 * 0.225, sigma_min = 0.05) = 0.05; one step only.
    strength, history = zeroth_order_search(lambda s: s * s, 0.1, 1.0, 0.2, 1, -1.0, 0.05)
    assert history[0]["gradient"] == pytest.approx(0.225) and strength == 0.05 and len(history) == 2


def test_corruptions_by_hand():
    embeddings = torch.tensor([[1.0, -5.0, 3.0, 0.5], [-2.0, 0.1, 0.2, 4.0]])
    noise = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    noised = corrupt_embeddings(embeddings, "rand_noise_first_n", 3.0, 1, noise)
    torch.testing.assert_close(noised, torch.tensor([[4.0, -5.0, 3.0, 0.5], [-5.0, 0.1, 0.2, 4.0]]))
    noised = corrupt_embeddings(embeddings, "rand_noise_first_n", 2.0, 2, noise)
    torch.testing.assert_close(noised, torch.tensor([[3.0, -1.0, 3.0, 0.5], [-4.0, 1.1, 0.2, 4.0]]))
    zeroed = corrupt_embeddings(embeddings, "zero_out_top_k", 2.4, 1)  # k = round(2.4) = 2
    torch.testing.assert_close(zeroed, torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 0.1, 0.2, 0.0]]))
    assert embeddings[0, 1] == -5.0  # out of place


def test_eco_corrupts_only_flagged_questions(micro, wrappers):
    model, tokenizer, forget, retain = micro
    eco = wrappers["eco"]
    prompts = [FMT.prompt_ids(tokenizer, forget[2]["question"]), FMT.prompt_ids(tokenizer, retain[5]["question"]),
               FMT.prompt_ids(tokenizer, retain[6]["question"])]
    ids, mask = left_pad_prompts(prompts, tokenizer.pad_token_id).values()
    decisions = eco.decisions(ids, mask)
    assert [d["flagged"] for d in decisions] == [True, False, False]
    assert decisions[0]["score"] > 0.5 > decisions[1]["score"]
    logits = eco(input_ids=ids, attention_mask=mask).logits
    target = causal_lm_logits(model, ids, mask)
    assert torch.equal(logits[1:], target[1:])  # unflagged rows: exactly the target's logits, in the same batch
    start = ids.shape[1] - len(prompts[0]) + len(eco.layout.head)  # first question token of row 0
    assert torch.equal(logits[0, :start], target[0, :start])  # before the question nothing changes
    assert not torch.allclose(logits[0, start:], target[0, start:])
    assert not eco.model.get_input_embeddings()._forward_hooks  # the hook lives only during the call
    assert torch.equal(eco(input_ids=ids, attention_mask=mask).logits, logits)  # the same noise on every call


def test_eco_build_record(wrappers):
    eco = wrappers["eco"]
    record = eco.classifier_record
    assert record["heldout_rows"] > 0 and record["heldout_accuracy"] == 1.0 and record["train_accuracy"] == 1.0
    search = eco.search_record
    assert search["tuned"] and search["reached_target"] and eco.strength > eco.settings.strength
    assert search["history"][-1]["metric"] <= search["target"] < search["unflagged_metric"]


def test_classifier_without_holdout_says_so():
    settings = build_config(WRAPPERS.get("eco").config, {"classifier_steps": 50})
    _, _, record = train_classifier(["Where was Ann born"], ["Where was Bob born", "What does Cy write"], settings)
    assert record["heldout_accuracy"] is None and record["train_accuracy"] == 1.0


# --------------------------------------------------------------------------------------------------- all three


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_save_load_round_trip_gives_identical_logits(micro, micro_bench, wrappers, tmp_path, name):
    _, tokenizer, forget, retain = micro
    wrapped = wrappers[name]
    save_wrapped(wrapped, str(micro_bench.target_dir), tmp_path / name)
    loaded = load_wrapped(tmp_path / name)
    assert type(loaded) is type(wrapped)
    batch = right_padded(tokenizer, [(row["question"], row["answer"]) for row in (*forget[:3], *retain[:2])])
    with torch.no_grad():
        assert torch.equal(loaded(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
                           wrapped(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits)
    assert loaded.decisions(batch["input_ids"], batch["attention_mask"]) == wrapped.decisions(batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_scoring_on_the_wrapped_model_is_the_wrapped_computation(micro, wrappers, name):
    model, tokenizer, forget, retain = micro
    wrapped = wrappers[name]
    pairs = [(row["question"], row["answer"]) for row in (*forget[:2], *retain[:2])]
    nll, _ = answer_nll(wrapped, tokenizer, FMT, pairs, batch_size=3)
    batch = right_padded(tokenizer, pairs)
    with torch.no_grad():
        manual = sequence_nll(wrapped.wrapped_logits(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"])
    np.testing.assert_allclose(nll, manual.numpy(), rtol=1e-4)
    target_nll, _ = answer_nll(model, tokenizer, FMT, pairs, batch_size=3)
    assert nll[0] > target_nll[0] + 1.0  # every wrapper acts on the first forget question
    answers = greedy_answers(wrapped, tokenizer, FMT, [q for q, _ in pairs], 12, batch_size=3)
    assert len(answers) == 4
    if name != "eco":  # prompt wrappers: greedy decoding equals the target's on the edited prompts
        rows = [FMT.prompt_ids(tokenizer, q) for q, _ in pairs]
        head = len(wrapped.layout.head)
        edited = [row[:head] + inserted + row[head:] for row, inserted in zip(rows, wrapped.row_insertions(rows), strict=True)]
        assert answers == [text.strip() for text in greedy_texts(model, tokenizer, edited, 12, batch_size=3)]


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_audit_attacks_run_on_the_wrapped_model(micro, wrappers, name):
    model, tokenizer, forget, retain = micro
    data = AuditData(forget=forget, retain=retain[:8], fmt=FMT)
    config = AuditConfig(max_new_tokens=16, batch_size=8)
    target = ATTACKS.get("direct").run(model, tokenizer, data, config)
    direct = ATTACKS.get("direct").run(wrappers[name], tokenizer, data, config)
    assert len(direct.per_sample) == len(forget) and direct.recovery < target.recovery
    paraphrase = ATTACKS.get("paraphrase").run(wrappers[name], tokenizer, data, config)
    assert 0.0 <= paraphrase.recovery <= 1.0 and len(paraphrase.per_sample) == len(forget)


def test_relearning_style_fine_tuning_goes_through_the_wrapper(micro, wrappers):
    model, tokenizer, forget, _ = micro
    copied = copy.deepcopy(wrappers["icul"])
    batch = right_padded(tokenizer, [(forget[0]["question"], forget[0]["answer"])])
    output = copied(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    output.loss.backward()
    assert copied.model.get_input_embeddings().weight.grad is not None
    assert model.get_input_embeddings().weight.grad is None  # the original target is untouched


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_empty_forget_set_is_refused(micro, name):
    with pytest.raises(UnlearnkitError, match="forget set is empty"):
        build(name, micro, forget=[])


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("icul", {"context_examples": "-1"}, "context_examples must be >= 0"),
    ("icul", {"forget_examples": "0"}, "forget_examples must be >= 1"),
    ("icul", {"flipped_answer": "flip"}, "flipped_answer must be one of"),
    ("memprompt", {"min_sim_threshold": "0"}, "min_sim_threshold must be >= 1"),
    ("memprompt", {"feedback": "Do not tell."}, "slot {entity}"),
    ("eco", {"threshold": "1.0"}, r"threshold must be in \[0, 1\)"),
    ("eco", {"corruption": "flip_sign"}, "corruption must be one of"),
    ("eco", {"strength": "0"}, "strength must be > 0"),
    ("eco", {"ngram_min": "5", "ngram_max": "3"}, "ngram_max"),
])
def test_settings_out_of_range_are_refused(name, settings, message):
    with pytest.raises(UnlearnkitError, match=message):
        build_config(WRAPPERS.get(name).config, settings)


def test_icul_needs_enough_retain_rows(micro):
    with pytest.raises(UnlearnkitError, match="context_examples=100"):
        build("icul", micro, context_examples=100)


def test_eco_needs_a_retain_set(micro):
    model, tokenizer, forget, _ = micro
    spec = WRAPPERS.get("eco")
    with pytest.raises(UnlearnkitError, match="give a retain set"):
        spec.wrapper.build(model, tokenizer, WrapData(forget, (), FMT), spec.config())


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_fast_generation_equals_the_generic_decoding_loop(micro, wrappers, name):
    """generate() runs the target's own cached decoding on the changed prompt; it must decode what the wrapped logits say."""
    from unlearnkit.data.encoding import left_pad_prompts

    _, tokenizer, forget, retain = micro
    wrapped = wrappers[name]
    assert wrapped.decodes_on_target
    questions = [row["question"] for row in forget[:4] + retain[:4]]
    batch = left_pad_prompts([FMT.prompt_ids(tokenizer, question) for question in questions], tokenizer.pad_token_id)
    options = {"max_new_tokens": 12, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    fast = wrapped.generate(**batch, **options)
    generic = wrapped.generate_stepwise(batch["input_ids"], batch["attention_mask"], **options)
    assert torch.equal(fast[:, :generic.shape[1]], generic)
    assert bool((fast[:, generic.shape[1]:] == tokenizer.pad_token_id).all())
    if name == "eco":  # the forget rows are flagged and their answers change; the retain rows' are the target's
        plain = micro[0].generate(**batch, do_sample=False, **options)
        assert torch.equal(fast[4:, :plain.shape[1]], plain[4:, :fast.shape[1]])


def test_memprompt_lower_bound_never_skips_a_key_the_exact_distance_would_retrieve(micro, wrappers):
    import random

    from unlearnkit.inference.memprompt import char_counts

    memory = wrappers["memprompt"]
    draw = random.Random(0)
    alphabet = "abcde fgé"
    for _ in range(300):
        first = "".join(draw.choice(alphabet) for _ in range(draw.randint(0, 12)))
        second = "".join(draw.choice(alphabet) for _ in range(draw.randint(0, 12)))
        bound = abs(char_counts(first) - char_counts(second)).sum() / 2
        assert bound <= levenshtein(first, second)
    # Retrieval over the memory with the bound gives what the exact distance to every key gives.
    for row in micro[2]:
        for query in (row["question"], row["question"][:-3] + "ing?", "What is the capital of " + row["question"][-12:]):
            processed = process_key(query)
            exact = [levenshtein(processed, key) for key in memory.keys]
            best = min(range(len(exact)), key=lambda index: (exact[index], index))
            found = memory.retrieve(query)
            assert found["retrieved"] == (exact[best] < memory.settings.min_sim_threshold)
            if found["retrieved"]:
                assert found["distance"] == exact[best] and found["key"] == memory.memory[best][0]


def test_every_audit_attack_runs_on_a_wrapped_model_unchanged(micro, micro_bench, wrappers):
    """The audit's attacks take a wrapped model as they take any model (spv_mia, run on request, included)."""
    model, tokenizer, forget, retain = micro
    data = AuditData(forget=forget, retain=retain[:16], holdout=micro_bench.split("holdout10"), fmt=FMT)
    config = AuditConfig(max_new_tokens=8, batch_size=8, spv_num_texts=8, spv_num_neighbours=2, relearn_learning_rate=1e-3)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name in ATTACKS.names():
        outcome = ATTACKS.get(name).run(wrappers["memprompt"], tokenizer, data, config)
        assert 0.0 <= outcome.recovery <= 1.0, name
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # attacks work on copies


@pytest.mark.parametrize("name", ["icul", "memprompt", "eco"])
def test_latent_attacks_read_the_targets_hidden_states_under_a_prompt_wrapper(micro, wrappers, name):
    """A white-box attacker reads the weights with prompts of their own: the logit lens on a wrapper that changes only the
    prompt reads what it reads on the target (its own forward re-pads rebuilt rows, whose positions the lens cannot index)."""
    model, tokenizer, forget, retain = micro
    data = AuditData(forget=forget, retain=retain[:8], fmt=FMT)
    config = AuditConfig(batch_size=8)
    for attack in ("logit_lens_head", "logit_lens_delta"):
        on_target = ATTACKS.get(attack).run(model, tokenizer, data, config)
        on_wrapper = ATTACKS.get(attack).run(wrappers[name], tokenizer, data, config)
        assert on_wrapper.recovery == on_target.recovery and on_wrapper.per_sample == on_target.per_sample
