"""Random mutations of valid inputs (issue 30, Deliver 5), bounded in count and time, seeded so a
failure replays: a recipe gets a clear error or works, never a traceback; a request body gets an
answer or a 4xx with a message, never a 5xx. The mutations are the ones people and clients make:
keys dropped, misspelt or added, values of the wrong type, sign or size, text cut short."""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import httpx
import pytest
import yaml
from test_wrong_use import cli, free_port, healthy, serve

VALUES = [None, 0, -1, 1.5, 3, "abc", "", [], {}, True, [1, "x"], {"a": 1}, "1e3", 2**63, -(2**63) - 1]


def mutate(obj, rng: random.Random):
    """One random change somewhere in a nested mapping or list (in place); returns obj."""
    path, node = [], obj
    while isinstance(node, dict | list) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], dict | list):
            break
        path.append(key)
        node = node[key]
    if not isinstance(node, dict | list) or not node:
        return obj
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    op = rng.choice(["value", "value", "drop", "rename", "add"])
    if op == "value":
        node[key] = copy.deepcopy(rng.choice(VALUES))
    elif op == "drop":
        del node[key]
    elif op == "rename" and isinstance(node, dict):
        node[key[:-1] + "x" if key else "x"] = node.pop(key)
    elif isinstance(node, dict):
        node[f"unknown_{rng.randrange(100)}"] = copy.deepcopy(rng.choice(VALUES))
    return obj


def test_mutated_recipes_get_a_clear_error_or_work(tmp_path):
    base = yaml.safe_load(Path("recipes/demo.yaml").read_text())
    text = Path("recipes/demo.yaml").read_text()
    rng = random.Random(0)
    deadline, outcomes = time.time() + 90, {0: 0, 2: 0}
    for i in range(120):
        if time.time() > deadline:
            break
        recipe = tmp_path / f"r{i}.yaml"
        if i % 4 == 3:  # the text itself cut or garbled, as an editor leaves it
            cut = rng.randrange(len(text))
            recipe.write_text(text[:cut] + rng.choice(["", ":", "  - [", "\t", "{"]) + text[cut + 1 :])
        else:
            recipe.write_text(yaml.safe_dump(mutate(copy.deepcopy(base), rng)))
        code, out = cli("train", "--dry-run", "--recipe", recipe)
        assert code in (0, 2), (recipe.read_text(), out)
        outcomes[code] += 1
        if code == 2:
            assert out.startswith("error:") and "Traceback" not in out, out
    assert outcomes[0] and outcomes[2], outcomes  # both kinds were tried


ENDPOINTS = {
    "/v1/completions": {"prompt": "def add(a, b):\n    return ", "max_tokens": 2, "stop": ["\n"]},
    "/completion": {"prompt": "import os\n", "n_predict": 2, "stream": False, "response_fields": ["content"]},
    "/infill": {
        "input_prefix": "def f(x):\n    ",
        "input_suffix": "\n    return y\n",
        "input_extra": [{"filename": "util.py", "text": "def g():\n    pass\n"}],
        "n_predict": 2,
    },
}


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = free_port()
    proc = serve(tiny_checkpoint, port, "--parallel", "2", "--max-tokens", "4", "--no-access-log")
    url = f"http://127.0.0.1:{port}"
    healthy(proc, url)
    yield url
    proc.terminate()
    proc.wait(30)


def test_mutated_request_bodies_never_get_a_5xx(server):
    rng = random.Random(1)
    deadline, seen = time.time() + 120, set()
    with httpx.Client(base_url=server, timeout=60) as client:
        for i in range(300):
            if time.time() > deadline:
                break
            path = rng.choice(list(ENDPOINTS))
            body = mutate(mutate(copy.deepcopy(ENDPOINTS[path]), rng), rng)
            raw = json.dumps(body).encode()
            if i % 5 == 4:  # bytes a broken client sends: cut short, not UTF-8, not JSON
                raw = rng.choice([raw[: rng.randrange(len(raw))], raw + b"\xff\xfe", b"\x00" + raw])
            r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (path, raw, r.status_code, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]["message"], (path, raw, r.text)
            seen.add(r.status_code)
    assert 200 in seen and seen - {200}, seen  # answers and refusals both happened


def test_the_prompt_cache_stops_at_its_limit(server):
    """Distinct prompts on the 2 slots: /metrics says how many the host-memory cache keeps, and its
    bound, and the count stops there however many more come."""
    with httpx.Client(base_url=server, timeout=60) as client:
        m = _metrics(client)
        cap = int(m["codemill_prompt_cache_max_prompts"])
        for i in range(cap + 12):
            body = {"prompt": f"# file {i}\n" + f"value_{i} = {i}\n" * 20, "max_tokens": 1}
            assert client.post("/v1/completions", json=body).status_code == 200
        m = _metrics(client)
    assert int(m["codemill_prompt_cache_prompts"]) <= cap
    assert int(m["codemill_prompt_cache_bytes"]) <= int(m["codemill_prompt_cache_limit_bytes"])
    assert int(m["codemill_prompt_cache_prompts"]) >= cap - 2  # it filled: the bound is what held


def _metrics(client: httpx.Client) -> dict[str, str]:
    return dict(line.split() for line in client.get("/metrics").text.splitlines())
