"""`unlearnkit serve`: the OpenAI-compatible endpoint, tested with the official openai client against the micro target.

Served on a free loopback port from a background thread (unlearnkit.serving.serving); the command itself is
started as a subprocess once (start, answer, SIGTERM, clean stop) and refused in-process on a port in use.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from openai import OpenAI

from tests.helpers import run_cli
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import greedy_answers, greedy_token_continuations
from unlearnkit.inference.base import WrappedModel, causal_lm_logits, strip_padding
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.serving import REQUESTS_FILE, SERVE_FILE, ServeSettings, check_log_folder, serving

FMT = PromptFormat("plain")
NAME = "micro-target"
MAX_NEW = 48  # the built-in splits' generation cap: every micro answer ends with EOS well before it


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


@pytest.fixture(scope="module")
def questions(micro_bench) -> list[str]:
    return [row["question"] for row in micro_bench.split("forget10") + micro_bench.split("retain90")]


@pytest.fixture(scope="module")
def server(target, tmp_path_factory):
    """The micro target served under NAME: (base URL, log folder)."""
    model, tokenizer = target
    output = tmp_path_factory.mktemp("serve") / "log"
    with serving(model, tokenizer, output=output, settings=ServeSettings(name=NAME, port=0, batch_size=8), fmt=FMT,
                 source="micro") as url:
        yield url, output


def client(url: str, **extra) -> OpenAI:
    return OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60, **extra)


def ask(url: str, question: str, **extra):
    return client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": question}],
                                               **{"temperature": 0, "max_tokens": MAX_NEW, **extra})


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / REQUESTS_FILE).read_text(encoding="utf-8").splitlines()]


def post_raw(url: str, path: str, body: bytes) -> tuple[int, dict]:
    """POST ``body`` as it is (the openai client would refuse to send malformed bodies): (status, JSON answer)."""
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


# --------------------------------------------------------------------------------------------- answers


def test_greedy_answers_and_usage_match_the_model(server, target, questions):
    url, _ = server
    model, tokenizer = target
    chosen = questions[:3]
    expected = greedy_answers(model, tokenizer, FMT, chosen, MAX_NEW)
    prompts = [FMT.prompt_ids(tokenizer, question) for question in chosen]
    tokens = greedy_token_continuations(model, prompts, MAX_NEW, tokenizer.pad_token_id, tokenizer.eos_token_id)
    for question, answer, prompt, generated in zip(chosen, expected, prompts, tokens, strict=True):
        generated = generated[:generated.index(tokenizer.eos_token_id) + 1]  # up to and with EOS; padding after it
        chat = ask(url, question)
        assert chat.object == "chat.completion" and chat.model == NAME and chat.id.startswith("chatcmpl-")
        assert chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content.strip() == answer and answer
        assert chat.choices[0].finish_reason == "stop"
        assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(prompt), len(generated))
        assert chat.usage.total_tokens == len(prompt) + len(generated)
        text = client(url).completions.create(model=NAME, prompt=f"Question: {question}\nAnswer:", temperature=0, max_tokens=MAX_NEW)
        assert text.object == "text_completion" and text.choices[0].text.strip() == answer
        assert (text.usage.prompt_tokens, text.usage.completion_tokens) == (len(prompt), len(generated))
        ids = client(url).completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=MAX_NEW)  # token ids
        assert ids.choices[0].text == text.choices[0].text


def test_max_tokens_and_stop_end_the_completion(server, target, questions):
    url, _ = server
    model, tokenizer = target
    prompt = FMT.prompt_ids(tokenizer, questions[0])
    generated = greedy_token_continuations(model, [prompt], MAX_NEW, tokenizer.pad_token_id, tokenizer.eos_token_id)[0]
    short = ask(url, questions[0], max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.choices[0].message.content == tokenizer.decode(generated[:3], skip_special_tokens=True)
    # The newer field name gives the same limit.
    newer = client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": questions[0]}],
                                                temperature=0, max_completion_tokens=3)
    assert newer.choices[0].message.content == short.choices[0].message.content
    full = tokenizer.decode(generated[:generated.index(tokenizer.eos_token_id)], skip_special_tokens=True)
    word = full.split()[2]  # a word in the middle of the answer
    cut = ask(url, questions[0], stop=[f" {word}", "never appears"])
    assert cut.choices[0].message.content == full[:full.index(f" {word}")]
    assert cut.choices[0].finish_reason == "stop"
    assert 0 < cut.usage.completion_tokens < len(generated)


def test_sampling_with_a_seed_repeats(server, questions):
    url, _ = server
    first, second = (client(url).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": questions[1]}], temperature=1.5, top_p=0.9, seed=7, max_tokens=12)
        for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content


def test_models_and_health(server):
    url, _ = server
    listed = client(url).models.list()
    assert [card.id for card in listed.data] == [NAME]
    assert client(url).models.retrieve(NAME).id == NAME
    health = get_json(url.removesuffix("/v1") + "/health")
    assert health["status"] == "ok" and health["model"] == NAME and health["waiting"] == 0


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("extra", "field"), [
    ({"n": 2}, "n"),
    ({"stream": True}, "stream"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"logprobs": True}, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"max_tokens": 90}, "max_tokens"),  # 13 prompt tokens + 90 > the context of 96
])
def test_bad_parameters_are_refused_with_400(server, questions, extra, field):
    url, _ = server
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": questions[0]}],
                                            **{"temperature": 0, **extra})
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == field and caught.value.body["type"] == "invalid_request_error"


def test_prompt_too_long_for_the_context(server, questions):
    url, _ = server
    long_question = " ".join(questions[:20])
    with pytest.raises(openai.BadRequestError) as caught:
        ask(url, long_question)
    assert "context is 96 tokens" in caught.value.message
    assert caught.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="context is 96 tokens"):
        client(url).completions.create(model=NAME, prompt=long_question, max_tokens=4)
    # The model still answers: a refused request costs nothing.
    assert ask(url, questions[0]).choices[0].finish_reason == "stop"


def test_unknown_model_is_404_naming_the_served_one(server, questions):
    url, _ = server
    with pytest.raises(openai.NotFoundError) as caught:
        client(url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": questions[0]}])
    assert NAME in caught.value.message and caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(url).models.retrieve("gpt-4o")


def test_conversation_the_plain_format_cannot_hold(server, questions):
    url, _ = server
    for messages in ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": questions[0]}],
                     [{"role": "user", "content": questions[0]}, {"role": "assistant", "content": "x"}],
                     [{"role": "tool", "content": "x"}],
                     []):
        with pytest.raises(openai.BadRequestError):
            client(url).chat.completions.create(model=NAME, messages=messages, temperature=0)
    # Text content parts are read as text.
    parts = client(url).chat.completions.create(model=NAME, temperature=0, max_tokens=MAX_NEW,
                                                messages=[{"role": "user", "content": [{"type": "text", "text": questions[0]}]}])
    assert parts.choices[0].message.content == ask(url, questions[0]).choices[0].message.content


@pytest.mark.parametrize("body", [
    b'{"model": "micro-target", "messages": [',  # truncated JSON
    b"[1, 2, 3]",  # not an object
    b'{"model": "micro-target"}',  # no messages
    b'{"model": "micro-target", "messages": "hello"}',
    b'{"model": "micro-target", "messages": [{"content": "hi"}]}',  # a message without a role
    b'{"model": "micro-target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}',
    b'{"model": "micro-target", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
])
def test_malformed_bodies_get_a_json_400(server, body):
    url, _ = server
    status, answer = post_raw(url, "/chat/completions", body)
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]


def test_unknown_route_and_huge_body(server):
    url, _ = server
    status, answer = post_raw(url, "/embeddings", b"{}")
    assert status == 404 and "message" in answer["error"]
    # A body over 1 MiB is refused from its headers, before it is sent.
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]["message"]
    connection.close()


def test_log_holds_digests_not_prompts(server, target, questions):
    url, folder = server
    _, tokenizer = target
    answered = ask(url, questions[5])
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="other", messages=[{"role": "user", "content": questions[5]}])
    lines = log_lines(folder)
    line = next(entry for entry in lines if entry["id"] == answered.id)
    prompt = FMT.prompt_text(tokenizer, questions[5])
    assert line["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert line["route"] == "/v1/chat/completions" and line["status"] == 200 and line["decision"] is None
    assert (line["prompt_tokens"], line["completion_tokens"]) == (answered.usage.prompt_tokens, answered.usage.completion_tokens)
    assert line["latency_s"] > 0 and line["finish_reason"] == "stop"
    assert lines[-1]["status"] == 404 and "error" in lines[-1]
    text = (folder / REQUESTS_FILE).read_text(encoding="utf-8")
    assert questions[5] not in text and answered.choices[0].message.content.strip() not in text


# --------------------------------------------------------------------------------------------- concurrency


def test_32_concurrent_requests_each_get_their_own_answer(server, target, questions):
    url, folder = server
    model, tokenizer = target
    chosen = questions[10:42]
    assert len(set(chosen)) == 32
    alone = [ask(url, question).choices[0].message.content for question in chosen]  # one at a time: batches of one
    expected = greedy_answers(model, tokenizer, FMT, chosen, MAX_NEW)
    assert [answer.strip() for answer in alone] == expected
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda question: ask(url, question), chosen))
    assert [response.choices[0].message.content for response in responses] == alone
    ids = {response.id for response in responses}
    assert len(ids) == 32
    lines = {line["id"]: line for line in log_lines(folder) if line["id"] in ids}
    assert len(lines) == 32 and all(line["status"] == 200 for line in lines.values())
    assert max(line["batch_size"] for line in lines.values()) > 1  # they were decoded in shared batches


class FlagWord(WrappedModel):
    """A guard for tests: flags prompts holding ``word``; a flagged prompt's answer is EOS at once (an empty answer)."""

    name = "flag-word-test"

    def __init__(self, model, tokenizer, word: str) -> None:
        super().__init__(model, tokenizer, settings=None)
        self.word = word

    def flagged(self, input_ids, attention_mask) -> list[bool]:
        return [self.word in self.tokenizer.decode(row) for row in strip_padding(input_ids, attention_mask)]

    def wrapped_logits(self, input_ids, attention_mask):
        logits = causal_lm_logits(self.model, input_ids, attention_mask)
        refuse = torch.tensor(self.flagged(input_ids, attention_mask), device=logits.device)
        eos = torch.full_like(logits, -1e4)
        eos[..., self.tokenizer.eos_token_id] = 1e4
        return torch.where(refuse[:, None, None], eos, logits)

    def decisions(self, input_ids, attention_mask):
        # The score as a tensor, as a classifier returns it: the log turns it into a number.
        return [{"flagged": flag, "score": torch.tensor(float(flag))} for flag in self.flagged(input_ids, attention_mask)]


def test_guard_decisions_are_logged(target, questions, tmp_path):
    model, tokenizer = target
    word = questions[0].split()[2]  # the first author's first name
    assert word not in questions[40]
    guard = FlagWord(model, tokenizer, word)
    settings = ServeSettings(name="guarded", port=0, log_prompts=True)
    with serving(guard, output=tmp_path / "log", settings=settings, fmt=FMT) as url:
        answers = [client(url).chat.completions.create(model="guarded", messages=[{"role": "user", "content": question}],
                                                       temperature=0, max_tokens=MAX_NEW) for question in (questions[0], questions[40])]
    assert answers[0].choices[0].message.content == "" and answers[0].usage.completion_tokens == 1  # EOS only
    assert answers[1].choices[0].message.content.strip() == greedy_answers(model, tokenizer, FMT, [questions[40]], MAX_NEW)[0]
    flagged, passed = log_lines(tmp_path / "log")
    assert flagged["decision"] == {"flagged": True, "score": 1.0} and passed["decision"] == {"flagged": False, "score": 0.0}
    assert flagged["prompt"] == FMT.prompt_text(tokenizer, questions[0]) and flagged["completion"] == ""
    record = json.loads((tmp_path / "log" / SERVE_FILE).read_text())
    assert record["wrapper"]["wrapper"] == "flag-word-test" and record["requests"] == {"answered": 2, "refused": 0}
    assert record["stopped"] is not None


class Blocking(WrappedModel):
    """The target, whose first model call waits until the test releases it (to fill the queue deterministically)."""

    name = "blocking-test"

    def __init__(self, model, tokenizer) -> None:
        super().__init__(model, tokenizer, settings=None)
        self.entered, self.release = threading.Event(), threading.Event()

    def wrapped_logits(self, input_ids, attention_mask):
        self.entered.set()
        assert self.release.wait(60)
        return causal_lm_logits(self.model, input_ids, attention_mask)


def test_full_queue_answers_503(target, questions, tmp_path):
    model, tokenizer = target
    blocking = Blocking(model, tokenizer)
    settings = ServeSettings(name="slow", port=0, batch_size=1, max_queue=1)
    with serving(blocking, output=tmp_path / "log", settings=settings, fmt=FMT) as url, ThreadPoolExecutor(2) as pool:
        def slow(question: str):
            return client(url).chat.completions.create(model="slow", messages=[{"role": "user", "content": question}],
                                                       temperature=0, max_tokens=4)

        running = pool.submit(slow, questions[0])
        assert blocking.entered.wait(60)  # the worker holds the first request
        waiting = pool.submit(slow, questions[1])
        health = url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + 60
        while get_json(health)["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.InternalServerError) as caught:
            slow(questions[2])
        assert caught.value.status_code == 503 and "--max-queue 1" in caught.value.message
        blocking.release.set()
        assert running.result(60).choices[0].finish_reason in ("stop", "length")
        assert waiting.result(60).choices[0].finish_reason in ("stop", "length")
    statuses = sorted(line["status"] for line in log_lines(tmp_path / "log"))
    assert statuses == [200, 200, 503]


def test_api_key_and_chat_only(target, questions, tmp_path):
    model, tokenizer = target
    settings = ServeSettings(name="locked", port=0, chat_only=True)
    with serving(model, tokenizer, output=tmp_path / "log", settings=settings, fmt=FMT, api_key="sesame") as url:
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        keyed = OpenAI(base_url=url, api_key="sesame", max_retries=0)
        assert keyed.chat.completions.create(model="locked", messages=[{"role": "user", "content": questions[0]}],
                                             temperature=0, max_tokens=4).usage.completion_tokens == 4
        with pytest.raises(openai.NotFoundError, match="chat requests only"):
            keyed.completions.create(model="locked", prompt="Question: x\nAnswer:", max_tokens=4)
        assert get_json(url.removesuffix("/v1") + "/health")["status"] == "ok"  # no key needed to check it is up


# --------------------------------------------------------------------------------------------- settings, folders, command


def test_settings_and_log_folder_checks(tmp_path):
    for bad in ({"port": 70000}, {"max_queue": 0}, {"batch_size": 0}, {"host": " "}, {"port": "80"}):
        with pytest.raises(UnlearnkitError):
            ServeSettings(**bad)
    folder = tmp_path / "log"
    folder.mkdir()
    (folder / SERVE_FILE).write_text("{}")
    (folder / REQUESTS_FILE).write_text("")
    with pytest.raises(UnlearnkitError, match="--overwrite"):
        check_log_folder(folder, False, None)
    check_log_folder(folder, True, None)  # an earlier serve log: replaceable
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UnlearnkitError, match=r"notes\.txt"):
        check_log_folder(folder, True, None)


def test_port_in_use_exits_2_before_loading(micro_bench, tmp_path, monkeypatch, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    import unlearnkit.inference.loading as loading

    def never(*_args, **_kwargs):
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr(loading, "load_any_model", never)
    try:
        status = run_cli(["serve", "--model", str(micro_bench.target_dir), "--port", str(port), "--output", str(tmp_path / "log")],
                         monkeypatch)
    finally:
        taken.close()
    assert status == 2
    error = capsys.readouterr().err
    assert f"port {port}" in error and "--port" in error and error.count("\n") == 1
    assert not (tmp_path / "log").exists()
    assert run_cli(["serve", "--model", str(micro_bench.target_dir), "--max-queue", "0", "--output", str(tmp_path / "x")],
                   monkeypatch) == 2
    assert run_cli(["serve", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x")], monkeypatch) == 2


def test_command_serves_and_stops_on_sigterm(micro_bench, questions, tmp_path):
    output = tmp_path / "log"
    command = [sys.executable, "-m", "unlearnkit", "--quiet", "serve", "--model", str(micro_bench.target_dir), "--port", "0",
               "--output", str(output), "--name", "cli", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("Serving cli at http://127.0.0.1:"), line + process.stderr.read()
        url = line.split(" at ")[1].split()[0]
        answer = client(url).chat.completions.create(model="cli", messages=[{"role": "user", "content": questions[0]}],
                                                     temperature=0, max_tokens=MAX_NEW)
        assert answer.choices[0].finish_reason == "stop"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Stopped by SIGTERM; 1 request(s) answered" in out
    record = json.loads((output / SERVE_FILE).read_text())
    assert record["stopped"] and record["requests"]["answered"] == 1 and record["model"] == str(micro_bench.target_dir)
    assert len(log_lines(output)) == 1
