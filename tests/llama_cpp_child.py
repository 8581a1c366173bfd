"""llama.cpp's side of the GGUF checks, run as a child process (`llama_cpp_run` in test_gguf.py).

A crash of the external engine (llama.cpp's AMX kernels segfault on q8_0 on Sapphire Rapids-class CPUs
when built with them, docs/editors.md) then kills this process only, and the test that asked fails
naming the signal instead of taking pytest down with it. Only llama_cpp and numpy are imported, so a
call costs a fraction of a second. Request: one JSON object on stdin; answer: JSON written to its `out`.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import llama_cpp
import numpy as np


def _llama(path: str, **kw) -> llama_cpp.Llama:
    # f32 KV cache (llama.cpp keeps f16 by default), so an f32 export is compared in f32 throughout
    return llama_cpp.Llama(model_path=path, n_threads=2, verbose=False, type_k=0, type_v=0, **kw)


def tokenize(gguf: str, texts: list[str]) -> dict:
    llm = _llama(gguf, vocab_only=True)
    return {"ids": [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]}


def logits(gguf: str, ids: list[int], n_ctx: int, npy: str) -> dict:
    llm = _llama(gguf, n_ctx=n_ctx, logits_all=True)
    llm.eval(ids)
    np.save(npy, np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    return {"npy": npy}


def greedy(gguf: str, prompt: list[int], n: int, n_ctx: int) -> dict:
    """llama.cpp's greedy tokens (argmax of its logits), stopping at its end-of-generation set."""
    llm = _llama(gguf, n_ctx=n_ctx, logits_all=True)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    llm.eval(prompt)
    out: list[int] = []
    while len(out) < n:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        out.append(token)
        llm.eval([token])
    return {"tokens": out}


def system_info() -> dict:
    return {"info": llama_cpp.llama_print_system_info().decode()}


def die(sig: str) -> dict:
    """What a crash looks like from the parent (tested there)."""
    os.kill(os.getpid(), signal.Signals[sig])
    return {}


OPS = {"tokenize": tokenize, "logits": logits, "greedy": greedy, "system_info": system_info, "die": die}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    out = request.pop("out")
    answer = OPS[request.pop("op")](**request)
    with open(out, "w") as f:
        json.dump(answer, f)
