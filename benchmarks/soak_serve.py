"""Soak `codemill serve` with editor traffic and hostile or vanishing clients (issue 37 item 6).

`codemill serve` runs in a process of its own on 127.0.0.1 (loopback only); this process is every
client at once, for `--seconds` (at most an hour) and at most `--max-requests` requests:
- unloaded: a well-behaved client's p50 over `--probes` requests, nothing else running;
- soak: `--slowloris` connections that send part of a request head and stall (reopened when the
  server closes them), `--idle` keep-alive connections that ask once and then say nothing (reopened
  likewise), `--typists` editors replaying keystrokes on real files (a request per pause, the one in
  flight dropped when a newer goes), `--vanishers` clients that start a stream and hang up after its
  first event, and the well-behaved client again, its latency compared with the unloaded p50;
- flood: `--flood` requests at once from as many clients, more than the slots and the queue hold:
  the server sheds the rest with 503 and Retry-After.
The server's RSS is sampled every `--sample-s` until the flood, with its prompt cache's size
(/metrics); growth is measured from the end of the warm-up to the largest sample after it (and,
as `rss_trend_after_warmup`, between the means of the first and last eighths of the samples after
it: the trend, without the swings of the transient allocations between heap trims). The
warm-up is the first `--warmup` of the soak, and lasts until the prompt cache is full (64 prompts,
or no room for another in `--cache-ram`): the cache is meant to fill, and takes more than 10 minutes
to on a busy machine, while a leak or fragmentation goes on growing after it (a cache that never
fills is said in `prompt_cache_full_s`: null, its growth then counted as the server's). A closed idle
connection is reopened 5-20 s later (an editor that comes back), a slowloris one at once.

Passes (exit 0) when: no 5xx other than the flood's 503s, each of those with Retry-After; the server
alive and answering /health at the end; RSS growth within 5 %; the well-behaved p50 under load
within 2x the unloaded one.

    nice -n 5 python benchmarks/soak_serve.py --model runs/demo/train/final --seconds 600 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # loopback only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("runs/demo/train/final"))
    ap.add_argument("--seconds", type=float, default=600.0, help="the soak's length (at most 3600)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="requests sent, at most")
    ap.add_argument("--parallel", type=int, default=4, help="the server's slots")
    ap.add_argument("--cache-ram", type=int, default=None, help="the server's --cache-ram (MiB)")
    ap.add_argument("--slowloris", type=int, default=200)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--typists", type=int, default=2)
    ap.add_argument("--vanishers", type=int, default=2)
    ap.add_argument("--flood", type=int, default=40, help="requests at once in the flood")
    ap.add_argument("--probes", type=int, default=20, help="well-behaved requests to measure unloaded")
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the soak before RSS is compared")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()
    args.seconds = min(args.seconds, 3600.0)
    out = asyncio.run(soak(args))
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    sys.exit(0 if out["passed"] else 1)


def start_server(model: Path, parallel: int, cache_ram: int | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "codemill.cli", "serve", str(model), "--host", HOST, "--port", str(port),
           "--parallel", str(parallel), "--no-access-log",
           *([] if cache_ram is None else ["--cache-ram", str(cache_ram)])]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"codemill serve exited with {server.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        time.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def positions(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Cursor positions in real files (the stdlib): path, prefix, suffix."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))
    rng, out = random.Random(seed), []
    while len(out) < n:
        file = rng.choice(files)
        text = file.read_text(errors="replace")
        if len(text) < 4000:
            continue
        cut = text.index("\n", rng.randrange(len(text) // 4, 3 * len(text) // 4)) + 1
        out.append((file.name, text[max(0, cut - 3000) : cut], text[cut : cut + 1000]))
    return out


class Tally:
    """Every answer's status, and the shed ones' Retry-After."""

    def __init__(self, budget: int):
        self.status: Counter[int] = Counter()
        self.shed_without_retry_after = 0
        self.budget, self.sent = budget, 0
        self.events: Counter[str] = Counter()

    def spend(self) -> bool:
        self.sent += 1
        return self.sent <= self.budget

    def answer(self, r: httpx.Response) -> None:
        self.status[r.status_code] += 1
        if r.status_code == 503 and "retry-after" not in r.headers:
            self.shed_without_retry_after += 1


async def soak(args) -> dict:
    server, url = start_server(args.model, args.parallel, args.cache_ram)
    tally = Tally(args.max_requests)
    probe_at = positions(1, seed=7)[0]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            unloaded = [await probe(client, probe_at, tally) for _ in range(args.probes)]
            unloaded = [x for x in unloaded if x is not None]
        stop, flooding, samples, loaded = asyncio.Event(), asyncio.Event(), [], []
        t0 = time.perf_counter()

        async def sample() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                while not stop.is_set() and not flooding.is_set():  # the soak's memory, not the flood's
                    at, rss = time.perf_counter() - t0, rss_mib(server.pid)
                    samples.append((at, rss, await prompt_cache(client)))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), args.sample_s)

        async def well_behaved() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                while not stop.is_set() and tally.spend():
                    before_flood = not flooding.is_set()
                    if (t := await probe(client, probe_at, tally)) is not None and before_flood:
                        loaded.append(t)
                    await asyncio.sleep(0.5)

        tasks = [asyncio.create_task(x) for x in (
            sample(), well_behaved(),
            *(slowloris(url, stop, tally) for _ in range(args.slowloris)),
            *(idle(url, stop, tally, k) for k in range(args.idle)),
            *(typist(url, stop, tally, k) for k in range(args.typists)),
            *(vanisher(url, stop, tally, k) for k in range(args.vanishers)),
        )]  # fmt: skip
        await asyncio.sleep(args.seconds)
        flooding.set()
        flood_status = await flood(url, args.flood, tally)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        alive = server.poll() is None and httpx.get(f"{url}/health").status_code == 200
        after_flood = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    full = next((t for t, _, cache in samples if cache_full(*cache)), None)
    warm_s = max(args.warmup * args.seconds, full or 0.0)
    warm = [m for t, m, _ in samples if t >= warm_s]
    growth = (max(warm) - warm[0]) / warm[0] if len(warm) > 1 else 0.0
    k = max(1, len(warm) // 8)  # the first and last eighths after the warm-up: the trend, not the swings
    trend = statistics.mean(warm[-k:]) / statistics.mean(warm[:k]) - 1 if warm else 0.0
    p50_unloaded, p50_loaded = (
        statistics.median(unloaded),
        statistics.median(loaded) if loaded else float("inf"),
    )
    bad_5xx = (
        sum(n for s, n in tally.status.items() if s >= 500 and s != 503) + tally.shed_without_retry_after
    )
    out = {
        "seconds": args.seconds, "parallel": args.parallel, "cache_ram": args.cache_ram, "slowloris": args.slowloris, "idle": args.idle,
        "typists": args.typists, "vanishers": args.vanishers, "flood": args.flood, "requests": tally.sent,
        "status": dict(sorted(tally.status.items())), "flood_status": dict(sorted(flood_status.items())),
        "events": dict(tally.events), "unexpected_5xx": bad_5xx,
        "shed_outside_flood": tally.status.get(503, 0) - flood_status.get(503, 0),
        "shed_without_retry_after": tally.shed_without_retry_after, "alive": alive,
        "rss_mib": [round(m, 1) for _, m, _ in samples], "rss_growth_after_warmup": growth,
        "rss_trend_after_warmup": trend,
        "warmup_end_s": warm_s, "prompt_cache_full_s": full,
        "rss_start_warm_end_mib": [round(m, 1) for m in (samples[0][1], warm[0], warm[-1])] if warm else None,
        "prompt_cache_mib": [round(b / 2**20, 1) for _, _, (_, _, b, _) in samples],
        "rss_after_flood_mib": after_flood,
        "p50_unloaded_s": p50_unloaded, "p50_loaded_s": p50_loaded, "p50_ratio": p50_loaded / p50_unloaded,
        "p90_loaded_s": statistics.quantiles(loaded, n=10)[-1] if len(loaded) > 1 else p50_loaded,
        "well_behaved_served": len(loaded), "load_average": Path("/proc/loadavg").read_text().split()[:3],
    }  # fmt: skip
    out["passed"] = bool(
        bad_5xx == 0 and tally.shed_without_retry_after == 0 and alive and growth <= 0.05
        and out["p50_ratio"] <= 2.0 and flood_status.get(503, 0) > 0 and loaded
        and not any(k.startswith(("well_behaved_", "flood_")) for k in tally.events)
    )  # fmt: skip
    return out


async def prompt_cache(client: httpx.AsyncClient) -> tuple[int, int, int, int]:
    """The server's prompt cache: prompts held, the most it holds, bytes, its limit (0s when off)."""
    metrics = dict(line.split() for line in (await client.get("/metrics")).text.splitlines())
    keys = ("prompts", "max_prompts", "bytes", "limit_bytes")
    return tuple(int(metrics.get(f"codemill_prompt_cache_{k}", 0)) for k in keys)


def cache_full(prompts: int, most: int, nbytes: int, limit: int) -> bool:
    """The prompt cache holds as many prompts as it may, or has no room for one more of their mean size."""
    return prompts >= most or (prompts > 0 and nbytes + nbytes / prompts > limit)


async def probe(client: httpx.AsyncClient, at: tuple[str, str, str], tally: Tally) -> float | None:
    """A well-behaved completion: seconds to the whole answer (None unless 200)."""
    path, prefix, suffix = at
    t = time.perf_counter()
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 16, "path": path}
    try:
        r = await client.post("/infill", json=body, headers={"x-client-id": "well-behaved"})
    except httpx.TransportError as e:  # a reset or a timeout: the server failed a well-behaved client
        tally.events[f"well_behaved_{type(e).__name__}"] += 1
        return None
    tally.answer(r)
    return time.perf_counter() - t if r.status_code == 200 else None


async def slowloris(url: str, stop: asyncio.Event, tally: Tally) -> None:
    """Part of a request head, then nothing; a new connection when the server closes this one."""
    port = int(url.rsplit(":", 1)[1])
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            await writer.drain()
            read = asyncio.create_task(reader.read())
            await asyncio.wait({read, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                tally.events["slowloris_closed_by_server"] += 1
            read.cancel()
            writer.close()
        except OSError:
            tally.events["slowloris_connect_failed"] += 1
            await asyncio.sleep(1)


async def idle(url: str, stop: asyncio.Event, tally: Tally, k: int) -> None:
    """Ask /health once on a keep-alive connection, then stay silent; reopen when the server closes it."""
    port = int(url.rsplit(":", 1)[1])
    await asyncio.sleep(k * 0.005)  # not all in the same millisecond
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            tally.status[status] += 1
            read = asyncio.create_task(reader.read())  # the body, then the close
            await asyncio.wait({read, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                tally.events["idle_closed_by_server"] += 1
            read.cancel()
            writer.close()
            with contextlib.suppress(TimeoutError):  # an editor comes back later, not at once
                await asyncio.wait_for(stop.wait(), random.uniform(5, 20))
        except (OSError, asyncio.IncompleteReadError):
            tally.events["idle_connect_failed"] += 1
            await asyncio.sleep(1)


async def typist(url: str, stop: asyncio.Event, tally: Tally, k: int) -> None:
    """An editor: types at 60-180 ms a key, a request after each 100 ms pause, the one in flight
    dropped (its connection closed) when a newer one goes."""
    rng = random.Random(k)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        inflight: asyncio.Task | None = None

        async def one(body: dict) -> None:
            try:
                tally.answer(await client.post("/infill", json=body, headers={"x-client-id": f"editor-{k}"}))
            except asyncio.CancelledError:
                pass
            except httpx.TransportError as e:
                tally.events[f"typist_{type(e).__name__}"] += 1

        for path, prefix, suffix in positions(10_000, seed=100 + k):
            for ch in suffix[:60]:
                if stop.is_set() or not tally.spend():
                    if inflight is not None:
                        inflight.cancel()
                    return
                prefix += ch
                await asyncio.sleep(rng.uniform(0.06, 0.18))
                if rng.random() < 0.5:  # a pause long enough for the editor to ask
                    await asyncio.sleep(0.1)
                    if inflight is not None and not inflight.done():
                        inflight.cancel()
                        tally.events["typist_dropped"] += 1
                    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 32, "path": path}
                    inflight = asyncio.create_task(one(body))


async def vanisher(url: str, stop: asyncio.Event, tally: Tally, k: int) -> None:
    """Starts a stream and hangs up after its first event."""
    at = positions(50, seed=200 + k)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        i = 0
        while not stop.is_set() and tally.spend():
            path, prefix, suffix = at[i % len(at)]
            body = {
                "input_prefix": prefix,
                "input_suffix": suffix,
                "n_predict": 64,
                "path": path,
                "stream": True,
            }
            try:
                async with client.stream("POST", "/infill", json=body) as r:
                    tally.answer(r)
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            tally.events["vanished_mid_stream"] += 1
                            break
            except httpx.TransportError as e:
                tally.events[f"vanisher_{type(e).__name__}"] += 1
            i += 1
            await asyncio.sleep(0.3)


async def flood(url: str, n: int, tally: Tally) -> Counter[int]:
    """`n` requests at once from as many clients: the slots and the queue take some, 503 the rest."""
    at = positions(n, seed=300)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=n)) as client:

        async def one(k: int) -> int:
            path, prefix, suffix = at[k]
            body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 16, "path": path}
            try:
                r = await client.post("/infill", json=body, headers={"x-client-id": f"flood-{k}"})
            except httpx.TransportError as e:
                tally.events[f"flood_{type(e).__name__}"] += 1
                return 0
            tally.answer(r)
            return r.status_code

        return Counter(await asyncio.gather(*(one(k) for k in range(n))))


if __name__ == "__main__":
    main()
