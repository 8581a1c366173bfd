"""Adapting a base checkpoint (`codemill adapt`, a recipe's `run.base`): the recipe the command
writes, the checks of the base, its GGUF export, and adapt.json's before and after."""

from __future__ import annotations

import json
from pathlib import Path

from codemill.config import load_recipe, parse_overrides
from codemill.errors import UserError, writable
from codemill.flow.layout import RunLayout

# recipes/adapt.yaml without its example base and sources: what `codemill adapt` starts from
ADAPT_DEFAULTS = """
run: {holdout: 0.1, holdout_unit: auto, fim_per_type: 20, crossfile_per_repo: 10, suites: [fim-loss], loss_files: 100}
data: {seq_len: 512}
train: {max_steps: 200, warmup_steps: 20, global_batch: 8, micro_batch: 4, lr: 1.0e-4, min_lr: 1.0e-5,
        ckpt_every: 50, log_every: 5}
"""


def write_recipe(base: Path, sources: list[str], out: Path, recipe: Path | None, format: str | None,
                 lora: int | None, overrides: list[str]) -> Path:  # fmt: skip
    """`codemill adapt`'s recipe, written as OUT/adapt.yaml: `recipe` (else ADAPT_DEFAULTS) with the
    base, the sources and the command's options set."""
    import yaml

    if not (base / "config.json").exists():
        raise UserError(
            f"{base} is not a checkpoint directory (no config.json); give the base model's folder"
        )
    given = load_recipe(recipe) if recipe else yaml.safe_load(ADAPT_DEFAULTS)
    given = {k: dict(v or {}) for k, v in given.items()}
    given.setdefault("run", {}).update(base=str(base.resolve()), sources=list(sources))
    if format:
        given.setdefault("data", {})["format"] = format
    if lora is not None:
        given.setdefault("train", {})["lora_rank"] = lora
    for key, value in parse_overrides(overrides).items():
        section, dot, name = key.partition(".")
        if not dot or section not in ("run", "curate", "data", "train"):
            raise UserError(f"--set {key}: name the section, e.g. train.max_steps=200 or data.seq_len=512")
        given.setdefault(section, {})[name] = value
    writable(out)
    path = RunLayout(out).adapt_recipe
    path.write_text(yaml.safe_dump(given, sort_keys=False))
    return path


def base_format(rcfg, recipe: dict) -> str | None:
    """With `run.base`: the checkpoint whole, and the FIM format it was trained in (the recipe's
    `data.format`, else its codemill.json's, else the family its tokenizer's special tokens name)."""
    if rcfg.base is None:
        return None
    from codemill.data.tokenizer import load_tokenizer
    from codemill.formats import codemill_info, detect_format, get_format, has_token
    from codemill.model.hf import check_checkpoint, hf_config

    base = Path(rcfg.base)
    if not (base / "config.json").exists():
        raise UserError(f"run.base {base} is not a checkpoint directory (no config.json)")
    check_checkpoint(base)
    tok = load_tokenizer(base)
    if tok.vocab_size > (rows := hf_config(base).vocab_size):
        raise UserError(
            f"{base}'s tokenizer has {tok.vocab_size:,} ids but its embeddings {rows:,} rows: the tokenizer "
            "is not the model's; put the base's own tokenizer files in its folder"
        )
    if name := (recipe.get("data") or {}).get("format") or codemill_info(base).get("format"):
        fmt = get_format(name)
        if missing := [t for t in fmt.specials if not has_token(tok, t)]:
            raise UserError(
                f"{base}'s tokenizer lacks {', '.join(missing)} of format {name}; pass another --format"
            )
        return name
    return detect_format(tok).name


def export(final: Path, gguf: Path, console) -> None:
    """The adapted model for llama.cpp; an architecture the export does not write is said, not fatal
    (the Hugging Face checkpoint in train/final serves and evaluates all the same)."""
    from codemill.model.gguf import export_gguf

    try:
        info = export_gguf(final, gguf)
    except UserError as e:
        console.print(f"[yellow]no GGUF export:[/yellow] {e}")
        return
    n = info["context"]
    console.print(f"GGUF: {gguf}; `llama-server -m {gguf} -c {n} -b {n // 2} -n 64` (docs/editors.md)")


def write_adapt_json(run: RunLayout, shared: RunLayout, rcfg, fmt: str) -> None:
    """adapt.json: held-out bits per byte of the base and the adapted model, the format, what was held out."""
    path = run.eval_results("fim-loss")
    if not path.exists():
        return
    r = json.loads(path.read_text())

    def scores(summary: dict) -> dict:
        a, ltr = summary.get("all", {}), summary.get("left-to-right", {})
        return {"fim_bits_per_byte": a.get("psm_bits_per_byte"), "fim_spm_bits_per_byte": a.get("spm_bits_per_byte"),
                "files_bits_per_byte": ltr.get("bits_per_byte")}  # fmt: skip

    change = _paired(r, json.loads(run.base_results.read_text())) if run.base_results.exists() else {}
    held = shared.heldout_files
    heldout = {
        "unit": "file" if held.exists() else "repo",
        "repositories": len(shared.heldout_repos.read_text().split()),
        "files": len(held.read_text().splitlines()) if held.exists() else None,
    }
    summary = {"base": {"path": rcfg.base, **scores(r.get("baselines", {}).get("base", {}))},
               "adapted": {"path": str(run.final), **scores(r["summary"])},
               "change": change, "format": fmt, "heldout": heldout}  # fmt: skip
    run.adapt_json.write_text(json.dumps(summary, indent=1) + "\n")


def _paired(adapted: dict, base: dict) -> dict:
    """Adapted minus base bits per byte on the same held-out items (FIM middles PSM and SPM, files),
    pooled as the suite pools them, with flow/stats.py's interval at one seed: the items resampled by
    held-out repository (files each alone: fim-loss does not record their repository)."""
    import math

    import numpy as np

    from codemill.flow.stats import paired_interval, task_repository

    def items(r: dict, measure: str) -> dict:
        if measure == "files":
            return {str(i): (f["nats"], f["bytes"], str(i)) for i, f in enumerate(r.get("files") or [])}
        return {t["task_id"]: (t[f"{measure}_nats"], t["bytes"], task_repository(t["task_id"]))
                for t in r["tasks"] if f"{measure}_nats" in t}  # fmt: skip

    out = {}
    for measure in ("psm", "spm", "files"):
        a, b = items(adapted, measure), items(base, measure)
        keys = sorted(set(a) & set(b))
        if not keys:
            continue
        diff = np.asarray([[a[k][0] - b[k][0]] for k in keys]) / math.log(2)  # [items, one seed]
        got = paired_interval(diff, [a[k][1] for k in keys], [a[k][2] for k in keys])
        out[measure] = {"bits_per_byte": got.mean, "ci95": [got.low, got.high], "items": len(keys)}
    return out
