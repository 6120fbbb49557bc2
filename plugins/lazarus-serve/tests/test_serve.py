"""`lazarus serve` tested as a user meets it: a server process on a free port, the official `openai`
client (and raw HTTP for what the client hides), a tiny model and two LoRA adapters."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")

KEY = "test-key"
ORIGIN = "http://chat-ui.example"
CONTEXT = 512


def make_adapter(model, path, seed: int, rank: int, keys: list[str], kind: str = "lora") -> None:
    """A random LoRA adapter that visibly changes the model's answers."""
    import mlx.core as mx

    from lazarus.adapters import AdapterConfig, apply_adapter, remove_adapter, save_adapter
    from lazarus.adapters.lora import LoRALinear

    config = AdapterConfig.from_dict({"fine_tune_type": kind, "num_layers": -1,
                                      "lora_parameters": {"rank": rank, "scale": 20.0, "dropout": 0.0, "keys": keys}})
    apply_adapter(model, config)
    mx.random.seed(seed)
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    save_adapter(model, path, config)
    remove_adapter(model)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    from lazarus.loader import load_model

    model_dir = tiny_checkpoint("llama", max_position_embeddings=CONTEXT)
    root = tmp_path_factory.mktemp("serve-adapters")
    model, tokenizer, _ = load_model(model_dir)
    make_adapter(model, root / "alpha", 1, 4, ["self_attn.q_proj", "self_attn.v_proj"])
    make_adapter(model, root / "beta", 2, 8, ["mlp.down_proj"])  # another rank and other layers
    make_adapter(model, root / "dora", 3, 4, ["self_attn.q_proj"], kind="dora")
    return {"model": model_dir, "alpha": root / "alpha", "beta": root / "beta", "dora": root / "dora",
            "loaded": (model, tokenizer)}


@pytest.fixture(scope="module")
def server(files):
    port = free_port()
    command = [sys.executable, "-c", "from lazarus.cli import main; main()", "serve", "--model", str(files["model"]),
               "--name", "tiny", "--adapter", f"alpha={files['alpha']}", "--adapter", f"beta={files['beta']}",
               "--port", str(port), "--api-key", KEY, "--max-tokens", "16", "--allow-origin", ORIGIN]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"lazarus serve did not start:\n{process.stdout.read()}")
            time.sleep(0.2)
    yield {"url": base, "port": port, "process": process}
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def raw(server, method: str, path: str, body: bytes | str | None = None, key: str | None = KEY):
    """(status, parsed JSON body) of one plain HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read().decode()
    connection.close()
    return response.status, json.loads(data)


def health(server) -> dict:
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as response:
        return json.loads(response.read())


def greedy(client, prompt: str, model: str = "tiny", max_tokens: int = 12) -> str:
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0).choices[0].text


# -- the endpoints --------------------------------------------------------------------------------------
def test_models_lists_the_base_and_each_adapter(client):
    assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]
    assert client.models.retrieve("alpha").id == "alpha"


def test_completions_plain_and_streamed_agree(client):
    plain = client.completions.create(model="alpha", prompt="The cat", max_tokens=12, temperature=0)
    choice = plain.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert plain.usage.completion_tokens == 12 or choice.finish_reason == "stop"
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    chunks = list(client.completions.create(model="alpha", prompt="The cat", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_chat_plain_and_streamed_agree(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    plain = client.chat.completions.create(model="beta", messages=messages, max_tokens=10, temperature=0)
    message = plain.choices[0].message
    assert message.role == "assistant" and message.content
    stream = client.chat.completions.create(model="beta", messages=messages, max_tokens=10, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


@pytest.mark.parametrize("model", ["tiny", "alpha"])
def test_greedy_text_equals_lazarus_generate(client, files, lazarus_cli, model):
    adapter = ["--adapter", files[model]] if model != "tiny" else []
    for chat, prompt in [(False, "Once upon a time"), (True, "Tell me a story")]:
        generated = lazarus_cli("generate", "--model", files["model"], *adapter, "--prompt", prompt,
                                "--max-tokens", 16, "--quiet", *(["--chat"] if chat else []))
        assert generated.exit_code == 0, generated.output
        if chat:
            served = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=16, temperature=0).choices[0].message.content
        else:
            served = greedy(client, prompt, model, 16)
        assert served == generated.stdout.removesuffix("\n")


def test_two_adapters_and_the_base_in_one_batch_answer_as_alone(client, server):
    prompt = "In the morning"
    alone = {model: greedy(client, prompt, model, 24) for model in ("tiny", "alpha", "beta")}
    assert len(set(alone.values())) == 3  # the adapters change the answer
    models = ["tiny", "alpha", "beta"] * 3
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda m: greedy(client, prompt, m, 24), models))
    assert together == [alone[m] for m in models]


def test_mixed_adapter_batch_equals_each_alone_in_process(files):
    """The same without HTTP: base and both adapters join one batch at the same step."""
    from lazarus.batch_generator import BatchGenerator
    from lazarus.loader import load_model
    from lazarus_serve.adapters import load_adapters

    model, tokenizer, _ = load_model(files["model"])
    selector = load_adapters(model, {"alpha": files["alpha"], "beta": files["beta"]})

    def run(indices):
        generator = BatchGenerator(model, tokenizer, before_forward=selector.select)
        rows = [generator.add("A short prompt", max_tokens=10, tag=i) for i in indices]
        tokens = {row: [] for row in rows}
        while len(generator):
            for out in generator.step():
                tokens[out.row].append(out.token)
        return [tokens[row] for row in rows]

    alone = [run([i])[0] for i in range(3)]
    assert alone[0] != alone[1] != alone[2] != alone[0]
    assert run([0, 1, 2, 1, 0]) == [alone[i] for i in (0, 1, 2, 1, 0)]


def test_sixteen_concurrent_clients_each_get_their_own_answer(client, files):
    from lazarus.generation import generate

    model, tokenizer = files["loaded"]
    prompts = [f"Story number {i} begins" for i in range(16)]
    expected = [generate(model, tokenizer, p, max_tokens=20).text for p in prompts]

    def ask(prompt):
        stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in stream)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == expected


def test_a_client_that_disconnects_does_not_disturb_the_rest(client, server, files):
    from lazarus.generation import generate

    model, tokenizer = files["loaded"]
    prompts = [f"Another tale {i}" for i in range(4)]
    expected = [generate(model, tokenizer, p, max_tokens=40).text for p in prompts]
    dropped_before = health(server)["dropped_rows"]

    def leave_early():
        connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
        body = json.dumps({"model": "alpha", "prompt": "Go on and on", "max_tokens": 400, "temperature": 0,
                           "stream": True})
        connection.request("POST", "/v1/completions", body=body,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        response.fp.readline()  # the first event has arrived: the row is in the batch
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()

    leaver = threading.Thread(target=leave_early)
    leaver.start()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: greedy(client, p, "tiny", 40), prompts))
    leaver.join()
    assert answers == expected
    deadline = time.time() + 30
    while health(server)["dropped_rows"] == dropped_before and time.time() < deadline:
        time.sleep(0.1)
    assert health(server)["dropped_rows"] == dropped_before + 1
    assert greedy(client, prompts[0], "tiny", 40) == expected[0]


def test_a_non_streamed_request_whose_client_leaves_is_dropped(server):
    before = health(server)["dropped_rows"]
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    body = json.dumps({"model": "beta", "prompt": "Go on", "max_tokens": 480, "n": 4, "temperature": 0})
    connection.request("POST", "/v1/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    time.sleep(0.3)  # the rows are running; the client gives up
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    deadline = time.time() + 30
    while health(server)["dropped_rows"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert health(server)["dropped_rows"] == before + 4
    assert health(server)["active_rows"] == 0


def test_a_slow_client_does_not_stall_the_others(client, server, files):
    from lazarus.generation import generate

    model, tokenizer = files["loaded"]
    prompts = [f"Yet another tale {i}" for i in range(4)]
    expected = [generate(model, tokenizer, p, max_tokens=30).text for p in prompts]
    slow_expected = generate(model, tokenizer, "A very long story", max_tokens=300).text
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=120)
    body = json.dumps({"model": "tiny", "prompt": "A very long story", "max_tokens": 300, "temperature": 0,
                       "stream": True})
    connection.request("POST", "/v1/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()  # headers only: its tokens are not read while the others run
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda p: greedy(client, p, "tiny", 30), prompts))
    assert answers == expected
    text = ""
    for line in response:  # read late, the slow client still gets its whole answer
        if line.startswith(b"data: {"):
            text += json.loads(line[6:])["choices"][0]["text"]
    connection.close()
    assert text == slow_expected


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", '{"model": "tiny", "messages": [', 400, "invalid_json"),
    ("POST", "/v1/chat/completions", '["not", "an", "object"]', 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {"model": "gamma", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400,
     "missing_required_parameter"),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400,
     "invalid_type"),
    ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": "hot"}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": 7}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "top_p": 0}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "n": 0}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": ["hi"] * 5, "n": 64}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "stop": 3}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": True}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": []}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": [1, 99999]}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "word " * (CONTEXT + 10)}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": CONTEXT}, 400,
     "context_length_exceeded"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "presence_penalty": 1}, 400,
     "unsupported_parameter"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "stream_options": 1}, 400, "invalid_type"),
    ("GET", "/v1/nothing-here", None, 404, "not_found"),
    ("GET", "/v1/completions", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS,
                         ids=[f"{i}-{b[-1]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_4xx_and_the_next_good_one_succeeds(server, client, method, path, body, status, code):
    payload = body if body is None or isinstance(body, str) else json.dumps(body)
    got, answer = raw(server, method, path, payload)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"] and "Traceback" not in answer["error"]["message"]
    assert greedy(client, "Still there?", max_tokens=3)


def test_the_api_key_is_required(server):
    for key in (None, "wrong"):
        status, answer = raw(server, "GET", "/v1/models", key=key)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0).models.list()


def test_the_next_chat_turn_reuses_the_first_and_answers_the_same(client, server, files):
    from lazarus.generation import generate

    model, tokenizer = files["loaded"]
    messages = [{"role": "system", "content": "You are a patient storyteller who likes rivers."},
                {"role": "user", "content": "Tell me about the old mill by the river, please."}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    hits = health(server)["prefix_hits"]
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert health(server)["prefix_hits"] == hits + 1
    expected = generate(model, tokenizer, tokenizer.encode_chat(messages), max_tokens=12).text
    assert second.choices[0].message.content == expected


def test_browser_pages_from_the_allowed_origin_may_call(server):
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    for origin, allowed in ((ORIGIN, True), ("http://elsewhere.example", False)):
        connection.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        response = connection.getresponse()
        response.read()
        assert (response.getheader("access-control-allow-origin") == origin) == allowed
    connection.close()


def test_n_seed_and_logprobs(client):
    kwargs = dict(model="alpha", prompt="Pick a word:", max_tokens=8, temperature=1.0, seed=11, n=3)
    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # each choice draws its own samples
    lengths = [8 if c.finish_reason == "length" else 1 for c in first.choices]
    assert sum(lengths) <= first.usage.completion_tokens <= 24  # the prompt is counted once:
    assert first.usage.prompt_tokens == client.completions.create(**{**kwargs, "n": 1}).usage.prompt_tokens
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert content and all(len(e.top_logprobs) == 3 for e in content)
    # greedy: the chosen token is the most likely one
    assert all(e.top_logprobs[0].logprob == pytest.approx(e.logprob) for e in content)
    text = client.completions.create(model="tiny", prompt="hi", max_tokens=5, temperature=0, logprobs=2)
    logprobs = text.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert "".join(logprobs.tokens) == text.choices[0].text


def test_unseeded_sampling_works(client):
    for model in ("tiny", "alpha"):
        answer = client.completions.create(model=model, prompt="Once", max_tokens=6, temperature=0.9, top_p=0.8, n=2)
        assert len(answer.choices) == 2 and all(c.finish_reason for c in answer.choices)


def test_stop_strings_end_the_text(client):
    full = greedy(client, "Once upon a time", max_tokens=16)
    stop = full.strip()[3:5]
    cut = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16, temperature=0,
                                    stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]


# -- the command ------------------------------------------------------------------------------------------
def test_check_loads_everything_and_exits(lazarus_cli, files):
    result = lazarus_cli("serve", "--model", files["model"], "--adapter", f"alpha={files['alpha']}", "--check")
    assert result.exit_code == 0 and "ok:" in result.stdout and "alpha" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--adapter", "alpha"], "NAME=DIR"),
    (["--adapter", "alpha=/does/not/exist"], "does not exist"),
    (["--api-key", " "], "--api-key is empty"),
    (["--adapter", "a=DORA"], "cannot share a batch"),
])
def test_bad_options_are_one_line_errors(lazarus_cli, files, args, message):
    args = [a.replace("DORA", str(files["dora"])) for a in args]
    result = lazarus_cli("serve", "--model", files["model"], *args, "--check")
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_a_taken_port_is_a_one_line_error(lazarus_cli, files, server):
    result = lazarus_cli("serve", "--model", files["model"], "--port", server["port"])
    assert result.exit_code == 2 and f"127.0.0.1:{server['port']}" in result.stderr


def test_plugins_list_shows_serve(lazarus_cli):
    result = lazarus_cli("plugins", "list", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["serve"]["status"] == "loaded" and rows["serve"]["distribution"] == "lazarus-serve"
