"""The server against clients that flood it, stall, idle or vanish (issue 37 item 6): a real server on
127.0.0.1, real sockets and clients."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from codemill.serve.engine import Engine

    engine = Engine(tiny_checkpoint, parallel=1)
    engine.stop_ids = set()  # requests decode all the tokens they ask for: the slot stays held
    return engine


def _waiting(url: str) -> int:
    metrics = httpx.get(url + "/metrics").text
    return int(
        next(line for line in metrics.splitlines() if line.startswith("codemill_queue_waiting")).split()[1]
    )


def test_a_full_queue_is_shed_with_503_and_retry_after(engine):
    """One slot and one place in the queue, twelve clients at once asking for long answers: the slot
    and the queue take two, the others are answered 503 at once, with Retry-After (and
    x-should-retry: false for openai-python); the server serves the next client after."""
    from concurrent.futures import ThreadPoolExecutor

    from codemill.serve.http import create_app
    from codemill.serve.server import Server

    long = min(400, engine.max_len - 8)
    with Server(create_app(engine, max_queue=1, max_tokens=long, access_log=False)) as s:

        def ask(k: int) -> httpx.Response:
            body = {"prompt": [5, 6, 7 + k], "n_predict": long}
            return httpx.post(s.url + "/completion", json=body, headers={"x-client-id": f"c{k}"}, timeout=120)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, range(12)))
        shed = [r for r in answers if r.status_code == 503]
        assert {r.status_code for r in answers} == {200, 503} and len(shed) >= 6, [
            r.status_code for r in answers
        ]
        for r in shed:
            assert r.headers["retry-after"] == "1" and r.headers["x-should-retry"] == "false"
            assert "queue is full" in r.json()["error"]["message"]
        assert ask(0).status_code == 200


def test_stalled_heads_and_idle_keep_alive_connections_are_closed_while_others_are_served(engine):
    """Slowloris (part of a head, then nothing) is closed after the head deadline, an idle keep-alive
    connection after uvicorn's keep-alive timeout, and a well-behaved client is served meanwhile."""
    from codemill.serve.http import create_app
    from codemill.serve.server import KEEP_ALIVE_S, Server

    with Server(create_app(engine, access_log=False), head_s=1.0) as s:
        port = int(s.url.rsplit(":", 1)[1])
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for c in stalled:
            c.sendall(b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for c in idle:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        t = time.perf_counter()
        r = httpx.post(s.url + "/completion", json={"prompt": [5, 6, 7], "n_predict": 4})
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 4
        for c in stalled:
            c.settimeout(10)
            assert c.recv(1024) == b""  # closed by the server, nothing answered
        assert time.perf_counter() - t < 8
        for c in idle:
            c.settimeout(KEEP_ALIVE_S + 5)
            answer = b""
            while chunk := c.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
        assert time.perf_counter() - t >= KEEP_ALIVE_S - 0.5  # kept alive until the timeout, then closed
        for c in stalled + idle:
            c.close()
        assert httpx.get(s.url + "/health").status_code == 200


def test_a_short_soak_has_no_5xx_and_sheds_the_flood(tiny_checkpoint, tmp_path):
    """benchmarks/soak_serve.py for a few seconds: slowloris, idle, typing, vanishing and flooding
    clients at once; no 5xx but the flood's 503s (each with Retry-After), the server alive after."""
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak_serve.py"), "--model", str(tiny_checkpoint),
           "--seconds", "8", "--slowloris", "20", "--idle", "50", "--typists", "2", "--vanishers", "1",
           "--flood", "24", "--probes", "3", "--sample-s", "1", "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    soak = json.loads(out.read_text())
    assert soak["unexpected_5xx"] == 0 and soak["shed_without_retry_after"] == 0 and soak["alive"], soak
    assert soak["flood_status"].get("503", 0) > 0 and soak["flood_status"].get("200", 0) > 0, soak
    assert soak["well_behaved_served"] > 0 and soak["events"].get("vanished_mid_stream", 0) > 0, soak
    assert len(soak["prompt_cache_mib"]) == len(soak["rss_mib"]) > 0, soak  # the warm-up can see the cache


GROWTH = """
import ctypes
from codemill.model.packed import bound_onednn_caches
bound_onednn_caches()  # as `serve` does, before the first primitive
import torch
from codemill.model.packed import PackedLinear

libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks "
                                               "uordblks fordblks keepcost").split()]
libc.mallinfo2.restype = Info
def in_use():
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
linear = PackedLinear(torch.nn.Linear(256, 688), 8)
with torch.inference_mode():
    for rows in range(1, 81):  # the caches fill
        linear(torch.randn(rows, 256))
    before = in_use()
    for rows in range(81, 161):
        linear(torch.randn(rows, 256))
print(in_use() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallinfo2")
def test_the_servers_onednn_caches_stop_growing():
    """Each prompt chunk's length is a new row count for the packed linears (model/packed.py), and
    oneDNN and ideep each keep a compiled primitive per shape, 1,024 by default: the heap in use grows
    some 0.6 MB a new length for this layer. `serve` bounds both caches before the model loads; then
    80 new lengths after the caches are full leave it where it was (46 MB more unbounded)."""
    from codemill.model import packed

    if not packed.available():
        pytest.skip("no oneDNN in this torch")

    run = subprocess.run([sys.executable, "-c", GROWTH], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) < 4 << 20
