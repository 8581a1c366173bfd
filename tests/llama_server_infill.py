"""llama-server's /infill prompt, ported rule by rule to compare token ids with codemill's: the
function `format_prompt_infill` of llama.cpp's tools/server/server-common.cpp:1737-1837 (the copy
llama-cpp-python 0.3.36 vendors, which codemill's Makefile builds), called from the /infill
handler in tools/server/server-context.cpp:4866 with the server's `-b`, `-n` and the slot's `-c`.
Tokens come from codemill's tokenizer, which tokenizes as the exported GGUF does (test_gguf.py).
`repo` and `current` are the two names llama-server fixes ("myproject", "filename": its TODOs)."""

from __future__ import annotations


def format_prompt_infill(tok, fmt, body: dict, *, n_batch: int = 2048, n_predict: int = -1, n_ctx: int,
                         spm_infill: bool = False, add_bos: bool = False, repo: str = "myproject",
                         current: str = "filename") -> list[int]:  # fmt: skip
    enc = lambda text: tok.encode_batch([text])[0]  # common_tokenize(vocab, text, false, false)  # noqa: E731
    sid = tok.token_id
    tokens_prefix, tokens_suffix = enc(body.get("input_prefix", "")), enc(body.get("input_suffix", ""))
    tokens_prompt = enc(body["prompt"]) if body.get("prompt") else []
    extra: list[int] = []
    if fmt.repo_name:  # llama_vocab_fim_rep
        extra += [sid(fmt.repo_name), *enc(repo + "\n")]
    for chunk in body.get("input_extra", []):
        if fmt.file_sep:
            extra += [sid(fmt.file_sep), *enc(chunk.get("filename", "tmp") + "\n")]
        else:
            extra += enc("\n\n--- snippet ---\n\n")
        extra += enc(chunk.get("text", ""))
    if fmt.file_sep:
        extra += [sid(fmt.file_sep), *enc(current + "\n")]
    # "pick FIM context to fit in a batch (ratio prefix:suffix = 3:1)"; C++ int division
    n_prefix_take = min(len(tokens_prefix), 3 * (n_batch // 4))
    n_suffix_take = min(len(tokens_suffix), max(0, n_batch // 4 - (2 + len(tokens_prompt))))
    n_extra_take = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra))  # the rest of the context
    tokens_prefix = tokens_prefix[len(tokens_prefix) - n_prefix_take :]
    tokens_suffix = tokens_suffix[:n_suffix_take]
    tokens_prefix = [sid(fmt.prefix), *tokens_prefix, *tokens_prompt]
    tokens_suffix = [sid(fmt.suffix), *tokens_suffix]
    inp, end = (tokens_suffix, tokens_prefix) if spm_infill else (tokens_prefix, tokens_suffix)
    if add_bos:
        inp = [sid(fmt.bos), *inp]
    inp = extra[len(extra) - n_extra_take :] + inp
    return [*inp, *end, sid(fmt.middle)]


def kept_extra(body_tokens: int, *, n_ctx: int, n_batch: int, n_predict: int) -> int:
    """How many extra-context tokens llama-server keeps of `body_tokens` at these settings."""
    return min(max(0, n_ctx - n_batch - 2 * n_predict), body_tokens)
