"""MUSE's VerbMem and KnowMem: hand-computed pure parts, and the model-level functions on the micro benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from unlearnkit.data.biographies import Biography, author_biographies, biography_passages
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation import muse
from unlearnkit.evaluation.metrics import rouge_l_f1, rouge_l_recall
from unlearnkit.evaluation.scoring import greedy_texts
from unlearnkit.modeling import load_model, load_tokenizer


def test_rouge_l_f1_by_hand() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3 tokens: P = 3/3, R = 3/6, F1 = 2PR/(P+R) = 2/3.
    assert rouge_l_f1(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(2 / 3)
    assert rouge_l_recall(["the cat sat"], ["the cat sat on the mat"])[0] == pytest.approx(1 / 2)
    # No shared token without stemming; with Porter stemming cats->cat, running/runs->run: F1 = 1.
    assert rouge_l_f1(["cats running"], ["cat runs"])[0] == 0.0
    assert rouge_l_f1(["cats running"], ["cat runs"], use_stemmer=True)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pair up"):
        rouge_l_f1(["a"], ["a", "b"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris\n\nQuestion: Who?", "Paris"),
        ("Paris\nQuestion: Who?", "Paris"),
        ("Paris. Question: Who?", "Paris. "),
        ("the end\n\n", "the end"),
        ("no stop here", "no stop here"),
    ],
)
def test_knowmem_answer_is_cut_before_a_new_question(text: str, expected: str) -> None:
    assert muse.cut_at_stop_strings(text) == expected


def test_knowmem_prompt_is_musess_few_shot_format() -> None:
    shots = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert muse.knowmem_prompt("Q?", shots) == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q?\nAnswer: "
    assert muse.knowmem_prompt("Q?", []) == "Question: Q?\nAnswer: "


def test_keep_last_keeps_bos_and_the_end() -> None:
    assert muse._keep_last([1, 5, 6, 7, 8], room=3, bos_id=1) == [1, 7, 8]
    assert muse._keep_last([5, 6, 7, 8], room=3, bos_id=1) == [6, 7, 8]
    assert muse._keep_last([1, 5], room=3, bos_id=1) == [1, 5]
    assert muse._keep_last([1, 5, 6, 7, 8], room=None, bos_id=1) == [1, 5, 6, 7, 8]


def test_config_refuses_bad_values() -> None:
    with pytest.raises(UnlearnkitError, match="verbmem_max_new_tokens"):
        muse.MuseConfig(verbmem_max_new_tokens=0)
    with pytest.raises(UnlearnkitError, match="num_shots"):
        muse.MuseConfig(num_shots=-1)


def test_biographies_join_each_authors_answers_in_order() -> None:
    rows = [
        {"author": "Ann Lee", "answer": "Ann Lee was born in Oslo."},
        {"author": "Bo Kim", "answer": "Bo Kim was born in Rome."},
        {"author": "Ann Lee", "answer": "Ann Lee writes poems. "},
    ]
    bios = author_biographies(rows)
    assert [b.author for b in bios] == ["Ann Lee", "Bo Kim"]
    assert bios[0].text == "Ann Lee was born in Oslo. Ann Lee writes poems."
    with pytest.raises(UnlearnkitError, match="no field 'author'"):
        author_biographies([{"answer": "x"}])


def test_passages_and_windows_fit_and_reassemble(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    bios = author_biographies(micro_bench.split("forget10"))
    passages = biography_passages(bios, tokenizer, max_tokens=40)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731 - a one-line helper, local to this test
    assert len(passages) > 1 and all(count(p["text"]) <= 40 for p in passages)
    # Whole sentences, in order: the passages join back into the biography.
    assert " ".join(p["text"] for p in passages) == bios[0].text
    # A sentence longer than the limit is cut to its first tokens.
    long = biography_passages([Biography("X", (bios[0].sentences[0],))], tokenizer, max_tokens=3)
    assert count(long[0]["text"]) <= 3
    windows = muse.text_windows(tokenizer, [p["text"] for p in passages], prefix_tokens=8, window_tokens=40)
    assert [w["prompt"] + w["gt"] for w in windows] == [p["text"] for p in passages if count(p["text"]) > 8]
    with pytest.raises(UnlearnkitError, match="cannot hold a prefix"):
        muse.text_windows(tokenizer, ["a b"], prefix_tokens=8, window_tokens=8)


def test_truncation_counts_special_tokens_as_muse_does(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    text = micro_bench.split("forget10")[0]["answer"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert muse.truncate_to_tokens(tokenizer, text, 4) == tokenizer.decode(ids[:3])  # BOS takes one of the 4


def test_verbmem_scores_a_reproduced_continuation_as_one(micro_bench) -> None:
    """Items whose true continuation is the model's own greedy answer (ended by EOS, so no token cut) score F1 = 1."""
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    prompts = [f"Question: {row['question']}\nAnswer:" for row in micro_bench.split("retain90")[:6]]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    outputs = greedy_texts(model, tokenizer, ids, max_new_tokens=30, batch_size=4)
    items = [{"prompt": p, "gt": o} for p, o in zip(prompts, outputs, strict=True)]
    config = muse.MuseConfig(verbmem_max_new_tokens=30, batch_size=1)
    one_by_one = muse.verbmem(model, tokenizer, items, config)
    batched = muse.verbmem(model, tokenizer, items, muse.MuseConfig(verbmem_max_new_tokens=30, batch_size=8))
    assert one_by_one.value == pytest.approx(1.0)
    assert [s["generation"] for s in one_by_one.per_sample] == [s["generation"] for s in batched.per_sample]
    # A wrong continuation scores what rouge_l_f1 says of the recorded generations.
    wrong = muse.verbmem(model, tokenizer, [{"prompt": prompts[0], "gt": "completely unrelated words"}], config)
    assert wrong.value == pytest.approx(rouge_l_f1([wrong.per_sample[0]["generation"]], ["completely unrelated words"])[0])


def test_verbmem_cuts_long_prompts_and_refuses_no_room(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    context = muse.context_length(model)
    long_prompt = " ".join(row["answer"] for row in micro_bench.split("retain90")[:20])
    result = muse.verbmem(model, tokenizer, [{"prompt": long_prompt, "gt": "x"}], muse.MuseConfig(verbmem_max_new_tokens=16))
    kept = len(tokenizer(long_prompt)["input_ids"]) - result.per_sample[0]["prompt_tokens_dropped"]
    assert kept == context - 16
    with pytest.raises(UnlearnkitError, match="verbmem_max_new_tokens"):
        muse.verbmem(model, tokenizer, [{"prompt": "a", "gt": "b"}], muse.MuseConfig(verbmem_max_new_tokens=context))


def test_knowmem_on_the_micro_model(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    retain = micro_bench.split("retain90")
    config = muse.MuseConfig(num_shots=1, knowmem_max_new_tokens=16)
    first = muse.knowmem(model, tokenizer, retain[1:5], retain[:1], config)
    # The model's own (cut) answers as the truth: F1 = 1 wherever it answered with any word.
    own = [{"question": s["question"], "answer": s["generation"]} for s in first.per_sample if s["generation"].strip()]
    assert own, "the micro target should answer retain questions"
    assert muse.knowmem(model, tokenizer, own, retain[:1], config).value == pytest.approx(1.0)
    assert np.isclose(first.value, np.mean([s["rouge_l_f1"] for s in first.per_sample]))
    assert all("\n\n" not in s["generation"] and "Question:" not in s["generation"] for s in first.per_sample)
    with pytest.raises(UnlearnkitError, match="Lower num_shots"):
        muse.knowmem(model, tokenizer, retain[:1], retain[1:20], muse.MuseConfig())


def test_builtin_target_recites_forget_biographies_the_oracle_never_saw(micro_bench) -> None:
    from unlearnkit.data.biographies import PASSAGE_TOKENS, training_texts

    tokenizer = load_tokenizer(micro_bench.target_dir)
    texts = [p["text"] for p in training_texts(micro_bench.split("forget10"), tokenizer)]
    items = muse.text_windows(tokenizer, texts, 16, PASSAGE_TOKENS)
    config = muse.MuseConfig(verbmem_max_new_tokens=PASSAGE_TOKENS - 16)
    target = muse.verbmem(load_model(micro_bench.target_dir), tokenizer, items, config).value
    oracle = muse.verbmem(load_model(micro_bench.oracle_dir("forget10")), tokenizer, items, config).value
    # The target was trained on these biographies (benchmark.biographies), the retain oracle was not.
    assert target > 0.5 > oracle, (target, oracle)
