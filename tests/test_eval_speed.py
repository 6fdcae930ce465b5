"""The evaluation's fast paths give the values of the plain ones: bulk tokenisation, logits for answer positions only."""

from __future__ import annotations

import numpy as np
import torch

from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.evaluation import scoring
from unlearnkit.losses import sequence_nll
from unlearnkit.modeling import load_model, load_tokenizer

FMT = PromptFormat("plain")


def test_bulk_encoding_equals_encode_qa(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    rows = micro_bench.split("forget10")
    # Repeated questions (as in the evaluator's answer/paraphrase/perturbed pairs) and a tight max_length that cuts.
    pairs = [(row["question"], answer) for row in rows for answer in (row["answer"], *row["perturbed_answer"])]
    for max_length in (512, 12):
        assert scoring.encode_pairs(tokenizer, FMT, pairs, max_length) == [
            encode_qa(tokenizer, FMT, question, answer, max_length) for question, answer in pairs
        ]
    assert FMT.answer_ids_many(tokenizer, []) == []


def test_answer_nll_with_partial_logits_equals_full_logits(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    rows = micro_bench.split("forget10") + micro_bench.split("real_authors")
    pairs = [(row["question"], row["answer"]) for row in rows]
    assert scoring._accepts_logits_to_keep(model)
    nll_sum, tokens = scoring.answer_nll(model, tokenizer, FMT, pairs, batch_size=5)
    # The plain computation: full logits of every position, one pair at a time (no padding at all).
    expected = []
    with torch.no_grad():
        for question, answer in pairs:
            batch = pad_batch([encode_qa(tokenizer, FMT, question, answer, 512)], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            expected.append(float(sequence_nll(logits.float(), batch["labels"])[0]))
    np.testing.assert_allclose(nll_sum, expected, rtol=1e-5)
    assert (tokens == [len(FMT.answer_ids(tokenizer, answer)) for _, answer in pairs]).all()
