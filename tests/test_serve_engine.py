"""The completion engine against transformers' generate(), and its cache reuse across requests."""

from __future__ import annotations

import json
import time

import pytest
import torch

from codemill.errors import UserError
from codemill.eval.sandbox import available
from codemill.serve.request import Params, Request, RequestError


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


PREFIX = "import json\n\n\ndef load(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled-step"])
def test_greedy_output_equals_transformers_generate(checkpoint, compiled):
    from transformers import AutoModelForCausalLM

    from codemill.serve.engine import Engine

    engine = Engine(checkpoint, compile=compiled)
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    for suffix in (None, SUFFIX, None):  # the third reuses the first's cache
        ids = engine.prompt(PREFIX, suffix, path="io.py", max_tokens=40)
        ours = engine.complete(ids, max_tokens=40)
        stops = sorted(engine.stop_ids)
        gen = hf.generate(
            torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
        )
        theirs = [t for t in gen[0, len(ids) :].tolist() if t not in engine.stop_ids]
        assert ours.tokens == theirs and len(ours.tokens) > 0


def test_lookup_proposes_what_followed_the_longest_recent_match():
    from array import array

    from codemill.serve.engine import lookup

    h = array("i", [5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7])
    assert lookup(h, 2) == [9, 2]  # "6 7" last seen before 9 (the latest match, not the first)
    assert lookup(array("i", [5, 6, 7, 8, 1, 6, 7, 9, 2, 5, 6, 7]), 3) == [8, 1, 6]  # "5 6 7" beats "6 7"
    assert lookup(array("i", [1, 2, 3]), 4) == []
    # the bytes of 2**24 then 0 contain those of 256 off a token boundary: no match there
    assert lookup(array("i", [256, 7, 2**24, 0, 3, 256]), 2) == [7, 2**24]
    assert lookup(array("i", [0, 1, 0, 0, 3, 1, 0]), 2) == [0, 3]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled-step"])
def test_drafts_in_idle_slots_give_the_same_answers_in_fewer_steps(checkpoint, compiled):
    """Prompt-lookup drafts fill the rows no request holds; each is verified in the step that feeds
    it, so the answer equals the one decoded a token a step, with fewer steps; a request whose client
    leaves with drafts in flight leaves its slot holding only verified tokens."""
    from codemill.serve.engine import Engine

    plain, drafted = (
        Engine(checkpoint, parallel=4, lookup=False),
        Engine(checkpoint, parallel=4, compile=compiled),
    )
    first = plain.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=48)
    ids = first + plain.complete(first, max_tokens=24).tokens + first  # what followed, to be looked up
    want = plain.complete(ids, max_tokens=48).tokens
    s, steps = drafted.start(ids, Params(max_tokens=48)), 0
    while not s.done:
        drafted.step([s])
        steps += 1
    assert s.out.tokens == want
    assert 0 < s.out.draft_n_accepted <= s.out.draft_n and steps < len(want)
    for _ in drafted.generate(ids, max_tokens=48):  # the client leaves after the first piece
        break
    assert drafted.slots[s.slot] == ids + want[: len(drafted.slots[s.slot]) - len(ids)]
    assert drafted.complete(ids, max_tokens=48).tokens == want


def test_cache_is_reused_and_gives_the_same_answers(checkpoint):
    from codemill.serve.engine import Engine

    warm, cold = Engine(checkpoint), Engine(checkpoint)
    typed = PREFIX
    first = warm.prompt(typed, SUFFIX, path="io.py", max_tokens=16)
    warm.complete(first, max_tokens=16)
    for ch in "data = json.load(f)":  # typing at the cursor: the SPM prompt only grows at its end
        typed += ch
        ids = warm.prompt(typed, SUFFIX, path="io.py", max_tokens=16)
        a = warm.complete(ids, max_tokens=16)
        cold.reset()
        b = cold.complete(ids, max_tokens=16)
        assert a.tokens == b.tokens  # reuse never changes the answer
        assert a.tokens_cached >= len(first) - 8 and a.tokens_evaluated < 12
        assert b.tokens_cached == 0


def test_prompts_a_slot_gives_up_come_back_from_host_memory(checkpoint):
    """Two editors on one slot: each request evicts the other's prompt, which the prompt cache keeps
    and copies back, so a request evaluates only what is new and answers as a cold one does; within
    the budget, least recently used go first, and a prompt that extends a kept one replaces it."""
    from codemill.serve.engine import Engine

    def prompts(engine: Engine) -> tuple[list[int], list[int]]:
        a = engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=8)
        b = engine.prompt(
            "class Point:\n    def __init__(self, x):\n        ", "\n", path="p.py", max_tokens=8
        )
        return a, b

    def editors(engine: Engine) -> list:
        a, b = prompts(engine)
        return [engine.complete(ids, max_tokens=8) for ids in (a, b, a, b, [*a, a[-1]])]

    kept, plain = editors(Engine(checkpoint)), editors(Engine(checkpoint, cache_ram_mib=0))
    assert [r.tokens for r in kept] == [r.tokens for r in plain]
    assert [r.tokens_evaluated for r in kept[2:]] == [1, 1, 1]  # only the last prompt token is new
    a, b = prompts(Engine(checkpoint, cache_ram_mib=0))
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)  # the format's opening
    assert all(r.tokens_cached <= shared for r in plain[1:4])
    engine = Engine(checkpoint, parallel=1)
    ids = [engine.prompt(f"x{i} = {i}\n" * 20, None, path="a.py", max_tokens=4) for i in range(4)]
    engine.complete(ids[0], max_tokens=4)
    assert not engine.prompts.kept  # the slot holds it
    engine.complete(ids[1], max_tokens=4)
    one = engine.prompts.nbytes
    engine.prompts.limit = 2 * one + one // 2  # room for two such prompts
    for i in (2, 3):
        engine.complete(ids[i], max_tokens=4)
    assert [k.ids[: len(ids[i])] for k, i in zip(engine.prompts.kept.values(), (1, 2), strict=True)] == ids[
        1:3
    ]
    assert engine.prompts.nbytes <= engine.prompts.limit
    held = engine.slots[0]
    extending = lambda: [k.ids for k in engine.prompts.kept.values() if k.ids[: len(held)] == held]  # noqa: E731
    engine.prompts.save(held, engine.cache, 0)
    assert extending() == [held]
    engine.prompts.save([*held, 5, 6], engine.cache, 0)  # replaces it
    engine.prompts.save(held, engine.cache, 0)  # a prefix of a kept prompt: not kept again
    assert extending() == [[*held, 5, 6]]


@pytest.mark.parametrize(
    ("compiled", "pack"),
    [(False, False), (True, False), (False, True)],
    ids=["eager", "compiled-step", "packed"],
)
def test_requests_joining_and_leaving_decode_as_they_would_alone(checkpoint, compiled, pack, monkeypatch):
    """Continuous batching: requests of different lengths join after their prefill and leave when
    they stop, while others decode; each one's greedy tokens equal the same request served alone.
    `packed`: every linear layer in oneDNN's layout (else none). Drafts ride in the step's rows
    beyond the slots, so requests get them while every slot is held; prompts go in 16 tokens a step
    while the others decode."""
    from torch._dynamo.utils import counters

    from codemill.model import packed
    from codemill.serve.engine import Engine

    monkeypatch.setattr(packed, "PACK_FROM", 0 if pack else 2**62)
    engine = Engine(checkpoint, parallel=3, compile=compiled, prefill_chunk=16)
    assert any(isinstance(m, packed.PackedLinear) for m in engine.model.modules()) == pack
    graphs = counters["stats"]["unique_graphs"]  # after the engine's warm-up
    cut = (10, 25, 40, 55)
    requests = []
    for n in cut:  # a prompt, its answer, the prompt again: lookup has drafts to offer
        ids = engine.prompt(PREFIX[:n], SUFFIX[: n // 2], path="io.py", max_tokens=24)
        requests.append((ids + engine.complete(ids, max_tokens=24).tokens + ids, 8 + n // 5))
    alone = [engine.complete(ids, max_tokens=n, reset=True).tokens for ids, n in requests]
    assert len({tuple(t) for t in alone}) > 1
    live, done, waiting, steps = [], {}, list(enumerate(requests)), 0
    drafts_all_held = decoded_beside_prefill = 0
    while waiting or live:
        if waiting and len(engine.busy) < engine.parallel and steps % 3 == 0:  # one joins every third step
            k, (ids, n) = waiting.pop(0)
            live.append((k, engine.start(ids, Params(max_tokens=n, reset=True))))
        fed, tokens = sum(s.out.draft_n for _, s in live), sum(len(s.out.tokens) for _, s in live)
        prefilling = any(s.pending for _, s in live)
        engine.step([s for _, s in live])
        if prefilling:
            decoded_beside_prefill += sum(len(s.out.tokens) for _, s in live) - tokens
        steps += 1
        if len(live) == engine.parallel:
            drafts_all_held += sum(s.out.draft_n for _, s in live) - fed
        done.update({k: s for k, s in live if s.done})
        live = [(k, s) for k, s in live if not s.done]
        assert len(live) <= engine.parallel and len(engine.busy) == len(live)
    assert [done[k].out.tokens for k in range(len(requests))] == alone
    assert steps < sum(len(t) for t in alone)  # they overlapped
    assert drafts_all_held > 0  # and the rows beyond the slots carried drafts
    assert decoded_beside_prefill > 0  # and requests decoded while a prompt went in
    assert counters["stats"]["unique_graphs"] == graphs  # compiled: no recompilation, whoever is busy


def test_a_long_prompt_goes_in_a_chunk_a_step(checkpoint):
    """Chunked prefill: a warm-up of a long prompt (llama.vim's n_predict 0) takes a step per 24
    tokens while another request decodes, is done when its prompt is in, and leaves it cached."""
    from codemill.serve.engine import Engine

    engine = Engine(checkpoint, parallel=2, prefill_chunk=24)
    long_ids = engine.prompt(PREFIX * 3, SUFFIX * 3, path="io.py", max_tokens=8)
    short = engine.start(engine.prompt(PREFIX, None, path="io.py", max_tokens=8), Params(max_tokens=8))
    warm = engine.start(long_ids, Params(max_tokens=0))
    steps = 0
    while not warm.done:
        assert warm.pending and engine.step([s for s in (short, warm) if not s.done])[1] == ""
        steps += 1
    assert not short.pending and len(long_ids) > 48  # the short one is in at once, the long one is not
    assert steps == -(-len(long_ids) // 24) - 1 and len(short.out.tokens) >= min(steps, 8)
    assert engine.slots[warm.slot] == long_ids and warm.out.tokens_evaluated == len(long_ids)
    again = engine.complete(long_ids, max_tokens=4)
    assert again.tokens_cached == len(long_ids) - 1 and again.slot == warm.slot


def test_stream_pieces_join_into_the_text_and_stops_apply(checkpoint):
    from codemill.serve.engine import Engine

    engine = Engine(checkpoint)
    ids = engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=30)
    steps = list(engine.generate(ids, max_tokens=30))
    pieces, final = [p for p, _ in steps], steps[-1][1]
    assert "".join(pieces) == final.text
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])  # never half a UTF-8 character
    assert final.stop_type in ("eos", "limit")
    if len(final.text) > 2:
        cut = engine.complete(ids, max_tokens=30, stop=(final.text[1:3],))
        assert cut.stop_type == "word" and cut.text == final.text[: final.text.find(final.text[1:3])]
    sampled = [
        engine.complete(ids, max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=s).tokens
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]
    with pytest.raises(RequestError, match="exceeds the context"):
        engine.complete(list(range(1, engine.max_len)), max_tokens=10)


@pytest.fixture(scope="module")
def server(checkpoint):
    from codemill.serve.engine import Engine
    from codemill.serve.http import create_app
    from codemill.serve.server import Server

    app = create_app(Engine(checkpoint, parallel=3), api_key="sekret", max_tokens=64, max_body_bytes=100_000)
    with Server(app) as s:
        yield s


def test_openai_client_against_the_server(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
    assert len(client.models.list().data) == 1
    r = client.completions.create(model="x", prompt=PREFIX, suffix=SUFFIX, max_tokens=12)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 12
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="x", prompt=PREFIX, suffix=SUFFIX, max_tokens=12, stream=True
        )
    ]
    assert "".join(pieces) == r.choices[0].text  # streaming gives the same greedy text
    with pytest.raises(openai.BadRequestError, match="limit of 64"):
        client.completions.create(model="x", prompt=PREFIX, max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="x", prompt=PREFIX, max_tokens=-3)
    for field, value in (("n", 2), ("logprobs", 3), ("echo", True), ("best_of", 2)):  # not silently ignored
        with pytest.raises(openai.BadRequestError, match=f"`{field}` is not supported"):
            client.completions.create(model="x", prompt=PREFIX, max_tokens=4, **{field: value})
    import httpx

    for raw in (b"{not json", b'{"prompt": "\xff\xfe"}'):  # broken JSON, and bytes that are not UTF-8
        r = httpx.post(server.url + "/v1/completions", content=raw,
                       headers={"Authorization": "Bearer sekret", "content-type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="x", prompt="x", max_tokens=2)


def test_llama_cpp_infill_bodies(server, capsys):
    import httpx

    h = {"Authorization": "Bearer sekret"}
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": [{"filename": "util.py", "text": "def helper():\n    pass\n"}],
            "prompt": "", "n_predict": 0}  # fmt: skip
    warm = httpx.post(server.url + "/infill", json=body, headers=h).json()  # llama.vim's warm-up request
    assert warm["content"] == "" and warm["tokens_evaluated"] > 0
    form = {**h, "content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    again = httpx.post(server.url + "/infill", content=json.dumps(body), headers=form).json()
    assert again["content"] == "" and again["tokens_evaluated"] == warm["tokens_evaluated"]
    body.update(n_predict=16, prompt="da", n_indent=4, t_max_predict_ms=2000, stop=["\n\n"])
    r = httpx.post(server.url + "/infill", json=body, headers=h).json()
    assert (
        r["stop_type"] in ("eos", "word", "limit") and r["timings"]["cache_n"] > warm["tokens_evaluated"] // 2
    )
    assert (
        r["tokens_evaluated"] == r["timings"]["cache_n"] + r["timings"]["prompt_n"]
    )  # llama-server's counts
    assert r["tokens_cached"] == r["tokens_evaluated"] + r["tokens_predicted"]
    assert r["stopping_word"] == ("\n\n" if r["stop_type"] == "word" else "") and r["truncated"] is False
    # llama.vim asks for flat fields and shows them in its info line
    fields = ["content", "timings/prompt_n", "timings/prompt_per_second", "timings/predicted_n",
              "timings/predicted_per_second", "truncated", "tokens_cached", "no/such"]  # fmt: skip
    vim = httpx.post(server.url + "/infill", json={**body, "response_fields": fields, "samplers": ["top_k"], "id_slot": 0},
                     headers=h).json()  # fmt: skip
    assert set(vim) == set(fields) - {"no/such"} and vim["content"] == r["content"]
    assert vim["timings/predicted_n"] > 0 and vim["timings/predicted_per_second"] > 0
    # streamed: llama-server's events, the pieces joining into the same text
    with httpx.stream("POST", server.url + "/infill", json={**body, "stream": True}, headers=h) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == r["content"] and events[-1]["stop"] is True
    assert [e["stop"] for e in events[:-1]] == [False] * (len(events) - 1)
    # /completion: the raw prompt, special-token strings parsed as llama-server does, or token ids
    raw = httpx.post(server.url + "/completion", json={"prompt": "<fim_prefix>def f(x):\n    return<fim_suffix>\n<fim_middle>",
                     "n_predict": 8}, headers=h).json()  # fmt: skip
    ids = httpx.post(server.url + "/completion", json={"prompt": [5, 6, 7], "n_predict": 8}, headers=h).json()
    assert raw["tokens_evaluated"] < 20 and ids["tokens_evaluated"] == 3 and raw["tokens_predicted"] > 0
    bad = httpx.post(server.url + "/completion", json={"prompt": [10**9], "n_predict": 8}, headers=h)
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    log: list[str] = []  # the access log: a line per request, with its tokens, written after the reply
    for _ in range(100):
        log += capsys.readouterr().err.splitlines()
        if any(" POST /completion 400 " in line for line in log):
            break
        time.sleep(0.02)
    assert any(
        " POST /infill 200 " in line and line.endswith(f" {r['tokens_predicted']} tokens") for line in log
    )
    assert any(" POST /completion 400 " in line for line in log)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    metrics = httpx.get(server.url + "/metrics", headers=h).text
    assert "codemill_requests_total" in metrics and "codemill_prompt_cache_bytes" in metrics
    big = httpx.post(
        server.url + "/infill", content=b"x" * 200_000, headers={**h, "content-type": "application/json"}
    )
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    junk = httpx.post(
        server.url + "/infill", content=b"{not json", headers={**h, "content-type": "application/json"}
    )
    assert junk.status_code == 400
    assert httpx.post(server.url + "/infill", json={"n_predict": -1}, headers=h).status_code == 400
    assert httpx.get(server.url + "/health").status_code == 200  # still alive after all of it


def test_concurrent_clients_decode_together_and_get_their_own_answers(server):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    bodies = [{"input_prefix": PREFIX[:n], "input_suffix": SUFFIX, "n_predict": 12 + n // 4, "cache_prompt": False,
               "path": "io.py"} for n in (12, 30, 47, 60, 66)]  # fmt: skip

    def ask(k: int) -> dict:
        h = {"Authorization": "Bearer sekret", "x-client-id": f"editor-{k}"}
        return httpx.post(server.url + "/infill", json=bodies[k], headers=h, timeout=60).json()

    one_by_one = [ask(k) for k in range(len(bodies))]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(ask, range(len(bodies))))
    assert [r["content"] for r in together] == [r["content"] for r in one_by_one]
    assert {r["id_slot"] for r in together} <= {0, 1, 2} and all(r["tokens_predicted"] > 0 for r in together)


def test_a_disconnect_stops_decoding(server):
    import httpx

    h = {"Authorization": "Bearer sekret"}
    before = httpx.get(server.url + "/metrics", headers=h).text
    body = {"prompt": PREFIX, "max_tokens": 64, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=h) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # read one event, then hang up
    deadline = time.time() + 10
    while time.time() < deadline:
        text = httpx.get(server.url + "/metrics", headers=h).text
        if "codemill_disconnects_total" in text:
            break
        time.sleep(0.05)
    assert "codemill_disconnects_total 1" in text and "codemill_disconnects_total" not in before


def test_an_editors_newer_request_stops_its_running_one_and_takes_its_slot(server):
    """With `x-client-id`, a request stops that client's request still decoding (answered 409 in its
    stream) before it is admitted, so it finds the older one's slot and cached prompt free."""
    import httpx

    h = {"Authorization": "Bearer sekret", "x-client-id": "editor-r"}
    prompt_ids = httpx.post(
        server.url + "/completion", json={"prompt": PREFIX, "n_predict": 0}, headers=h
    ).json()
    with httpx.stream("POST", server.url + "/completion", json={"prompt": PREFIX, "n_predict": 64, "stream": True},
                      headers=h, timeout=60) as r:  # fmt: skip
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # decoding now
        newer = httpx.post(server.url + "/completion", json={"prompt": PREFIX + "    ", "n_predict": 4},
                           headers=h, timeout=60).json()  # fmt: skip
        rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert rest[-1]["error"]["code"] == 409 and "newer request" in rest[-1]["error"]["message"]
    assert newer["timings"]["cache_n"] >= prompt_ids["tokens_evaluated"] - 1  # the older one's cache


def test_complete_a_position_in_a_file(checkpoint, tmp_path):
    import subprocess
    import sys

    from codemill.serve.engine import Engine

    src = tmp_path / "io.py"
    src.write_text(PREFIX + SUFFIX)
    line = PREFIX.count("\n") + 1
    col = len(PREFIX.rsplit("\n", 1)[1]) + 1
    r = subprocess.run([sys.executable, "-m", "codemill.cli", "complete", f"{src}:{line}:{col}", "--model", str(checkpoint),
                        "--max-tokens", "10"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    engine = Engine(checkpoint)
    expected = engine.complete(engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=10), max_tokens=10).text
    assert r.stdout == expected + "\n"
    bad = subprocess.run([sys.executable, "-m", "codemill.cli", "complete", f"{src}:99:1", "--model", str(checkpoint)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "outside" in bad.stdout


@pytest.mark.skipif(not available(), reason="bubblewrap is needed to execute HumanEval")
def test_eval_through_the_server_equals_eval_of_the_checkpoint(checkpoint, tmp_path):
    """`codemill eval --model http://...` against our own server gives the checkpoint's own answers."""
    from codemill.eval.models import Checkpoint, Endpoint
    from codemill.eval.runner import evaluate
    from codemill.serve.engine import Engine
    from codemill.serve.http import create_app
    from codemill.serve.server import Server

    with Server(create_app(Engine(checkpoint), max_tokens=512)) as s:
        via_http = evaluate("humaneval", Endpoint(s.url), tmp_path / "http", limit=3, max_tokens=48)
    direct = evaluate("humaneval", Checkpoint(checkpoint), tmp_path / "direct", limit=3, max_tokens=48)
    assert via_http["model"] == checkpoint.name
    got = [x["completion"] for x in via_http["samples"]]
    assert got == [x["completion"] for x in direct["samples"]] and any(got)
    assert via_http["summary"] == direct["summary"]
    with pytest.raises(UserError, match="is the server up"):
        Endpoint(s.url)  # the server is gone


def test_the_queue_replaces_a_clients_older_request_refuses_when_full_and_takes_back_the_gone(checkpoint):
    """The batcher's queue with one slot held: a newer request from the same client replaces its
    waiting one (at once, taking no new place), a full queue refuses newcomers but not a replacement,
    a cancelled request gives its slot or place back, and the rest run in the order they came."""
    import threading

    from codemill.serve.batcher import Batcher, QueueFull, Replaced, Task
    from codemill.serve.engine import Completion, Engine

    engine = Engine(checkpoint, parallel=1, lookup=False)
    engine.stop_ids = set()  # the request holding the slot decodes until it is cancelled
    ids = engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=8)
    batcher, ends, decoding = Batcher(engine, max_queue=3), {}, threading.Event()
    done = threading.Condition()

    def task(name: str, client: str, n: int = 8) -> Task:
        def emit(text: str, end) -> None:
            decoding.set()
            if end is not None:
                with done:
                    ends[name] = end
                    done.notify()

        return Task(Request(ids, Params(max_tokens=n)), emit, client)

    holder = task("b1", "editor-b", engine.max_len - len(ids) - 1)
    batcher.submit(holder)
    assert decoding.wait(30) and batcher.held == 1
    for name, client in (("a1", "editor-a"), ("a2", "editor-a"), ("c1", "editor-c"), ("x0", "x0")):
        batcher.submit(task(name, client))
    assert isinstance(ends.pop("a1"), Replaced) and not ends  # at once, while b1 holds the slot
    with pytest.raises(QueueFull):
        batcher.submit(task("x1", "x1"))  # a2, c1, x0 wait: the queue of 3 is full
    batcher.submit(task("a3", "editor-a"))  # a full queue still takes a replacement
    assert isinstance(ends.pop("a2"), Replaced) and batcher.held == 4
    gone = task("g1", "editor-g")
    batcher.cancel(next(t for t in batcher.waiting if t.client == "x0"))  # x0 hangs up while waiting
    batcher.submit(gone)  # its place is free
    batcher.cancel(gone)
    batcher.cancel(holder)  # b1's client leaves: the slot goes to the next in line
    with done:
        assert done.wait_for(lambda: len(ends) == 2, 60)
    assert list(ends) == ["c1", "a3"] and all(isinstance(e, Completion) for e in ends.values())
    assert batcher.held == 0 and not batcher.waiting and not engine.busy


def test_a_bug_while_decoding_fails_its_request_with_the_traceback_not_the_server(checkpoint, capfd):
    """An exception inside a step is a bug: its traceback goes to the log, its request (and those
    decoding beside it) get the exception, and the next request is served."""
    import threading

    from codemill.serve.batcher import Batcher, Task
    from codemill.serve.engine import Completion, Engine

    engine = Engine(checkpoint, parallel=2)
    ids = engine.prompt(PREFIX, SUFFIX, path="io.py", max_tokens=8)
    batcher, ends = Batcher(engine), []
    came = threading.Semaphore(0)

    def emit(text: str, end) -> None:
        if end is not None:
            ends.append(end)
            came.release()

    batcher.submit(Task(Request(ids, Params(max_tokens=8, until=lambda text: 1 // 0)), emit, "a"))
    assert came.acquire(timeout=30) and isinstance(ends[0], ZeroDivisionError)
    batcher.submit(Task(Request(ids, Params(max_tokens=8)), emit, "b"))
    assert came.acquire(timeout=30) and isinstance(ends[1], Completion) and ends[1].tokens
    err = capfd.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "1 // 0" in err


def test_health_is_503_while_the_model_loads(checkpoint):
    import threading

    import httpx

    from codemill.serve.engine import Engine
    from codemill.serve.http import create_app
    from codemill.serve.server import Server

    ready = threading.Event()

    def load():
        ready.wait(30)
        return Engine(checkpoint)

    with Server(create_app(load)) as s:
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x = ", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        ready.set()
        for _ in range(300):
            if httpx.get(s.url + "/health").status_code == 200:
                break
            time.sleep(0.05)
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x = ", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")

    def broken():
        raise FileNotFoundError("no weights here")

    with Server(create_app(broken)) as s:
        time.sleep(0.1)
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and "no weights here" in r.json()["error"]["message"]


def test_syntax_stop_cuts_where_the_file_parses_again(checkpoint, server):
    import httpx

    from codemill.serve.engine import Engine
    from codemill.stops import syntax_stop

    pre, suf = "def mean(xs):\n", "    return total / len(xs)\n"
    assert syntax_stop(pre, suf, "stats.py")("    total = sum(") == -1  # no line end yet
    multi = "    total = sum(\n        xs)\n"  # the first line end leaves a bracket open
    assert syntax_stop(pre, suf, "stats.py")(multi + "    n = len(\n") == len(multi)
    assert syntax_stop(pre, suf, "stats.py")("    total = sum(xs)\n    n = 2\n") == len(
        "    total = sum(xs)\n"
    )
    assert syntax_stop(pre, suf, "notes.txt") is None
    # a loop header parses before a dedented suffix (with an empty body): not complete until its body
    loop = "    for x in xs:\n        total += x\n"
    assert syntax_stop(pre, "    return total\n", "stats.py")(loop) == len(loop)
    # when the suffix's lines continue the loop's body, the loop never closes inside the completion
    assert syntax_stop(pre, "        total -= 1\n    return total\n", "stats.py")(loop) == -1

    engine = Engine(checkpoint)  # inside a string every line parses: sampled text stops at its first line end
    pre, suf = "def f():\n    s = '''\n", "'''\n    return s\n"
    ids = engine.prompt(pre, suf, path="a.py", max_tokens=64)
    stopped = 0
    for seed in range(8):
        free = engine.complete(ids, max_tokens=64, temperature=1.0, seed=seed)
        r = engine.complete(
            ids, max_tokens=64, temperature=1.0, seed=seed, until=syntax_stop(pre, suf, "a.py")
        )
        if r.stop_type == "syntax":
            stopped += 1
            assert r.text.endswith("\n") and free.text.startswith(r.text) and r.text.count("\n") >= 1
            assert syntax_stop(pre, suf, "a.py")(r.text) == len(r.text)
        else:
            assert r.text == free.text
    assert stopped >= 1
    h = {"authorization": "Bearer sekret"}
    r = httpx.post(
        server.url + "/infill",
        headers=h,
        json={"input_prefix": pre, "input_suffix": suf, "syntax_stop": True},
    )
    assert r.status_code == 400 and "path" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/infill", headers=h,
                   json={"input_prefix": pre, "input_suffix": suf, "syntax_stop": True, "path": "a.py", "n_predict": 32})  # fmt: skip
    assert r.status_code == 200 and r.json()["stop_type"] in ("eos", "limit")


def test_typing_in_a_long_file_keeps_the_prompt_start_and_the_cache(checkpoint):
    """The prefix head is cut at multiples of 64 tokens, so keystrokes do not slide the window."""
    from conftest import STDLIB

    from codemill.serve.engine import Engine

    engine = Engine(checkpoint, max_len=512)
    text = (STDLIB / "textwrap.py").read_text()
    cut = text.index("\n", len(text) // 2) + 1
    prefix, suffix = text[:cut], text[cut:]
    reused, evaluated = 0, 0
    for ch in "    return text":
        prefix += ch
        r = engine.complete(engine.prompt(prefix, suffix, path="textwrap.py", max_tokens=8), max_tokens=8)
        reused, evaluated = reused + r.tokens_cached, evaluated + r.tokens_evaluated
        assert len(engine.cached) <= 512
    assert reused > 10 * evaluated  # a sliding window would re-evaluate the whole prefix every time


def test_a_decode_step_decodes_each_row_at_its_own_position():
    """Rows of one batched cache (serving slots) with prompts of different lengths: one batched step
    gives each row the logits that row's sequence gets alone, step after step."""
    from codemill.model.llama import Llama, ModelConfig
    from codemill.serve.kvcache import KVCache

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_seq_len=64)  # fmt: skip
    model = Llama(cfg).eval()
    model.init_weights()
    prompts = [torch.randint(0, 300, (1, n)) for n in (5, 11, 2)]
    cache = KVCache.empty(cfg, 64, "cpu", torch.float32, slots=3)
    lengths = [p.shape[1] for p in prompts]
    with torch.no_grad():
        for i, p in enumerate(prompts):
            model.next_logits(p, cache.row(i, 0))  # prefill each slot on its own row
        seqs = [p[0].tolist() for p in prompts]
        for step in range(3):
            tokens = torch.tensor([[7 + step], [11 + step], [13 + step]])
            got = model.next_logits(
                tokens, cache.step(torch.tensor(lengths), [n + 1 for n in lengths], [0, 1, 2])
            )
            for i in range(3):
                lengths[i] += 1
                seqs[i].append(int(tokens[i]))
                alone = model(torch.tensor([seqs[i]]))[0, -1]
                assert torch.allclose(got[i], alone, atol=1e-4), (step, i)
