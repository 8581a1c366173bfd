"""Algorithm 1, the objectives and the packed stream, on real files."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import stdlib

from codemill.data.config import DataConfig
from codemill.data.deps import dependencies, dependency_kahn, dependency_walk
from codemill.data.documents import keyed_rng
from codemill.data.objectives import Objective, Span, fim_split, make_sample, sfim_span
from codemill.data.ordering import (
    STRATEGIES,
    _path_vectors,
    content_central_order,
    content_order,
    draw,
    order_files,
    path_groups,
    path_order,
)
from codemill.data.repo import CodeCorpus, SourceFile
from codemill.data.stats import StreamStats
from codemill.data.stream import TrainingStream
from codemill.data.tokenizer import HFTokenizer, load_tokenizer
from codemill.errors import UserError
from codemill.formats import get_format


@pytest.fixture(scope="module")
def corpus(code_corpus) -> CodeCorpus:
    return CodeCorpus(code_corpus)


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return load_tokenizer(bpe_dir)


def all_files(corpus):
    return [f for i in range(len(corpus)) for f in corpus.read(i)[1]]


def test_fim_and_sfim_split_the_file_exactly(corpus):
    files = all_files(corpus)
    langs = Counter()
    for seed in range(3):
        for f in files:
            rng = random.Random(seed)
            pre, mid, suf = fim_split(f.text, rng)
            assert pre + mid + suf == f.text
            for policy in (DataConfig(sfim_policy="weighted").sfim, DataConfig().sfim):
                span = sfim_span(f, rng, policy)
                if not isinstance(span, Span):
                    assert span in ("no_function", "no_node", "no_grammar")
                    continue
                langs[f.lang] += 1
                src = f.src
                # inside the chosen node, ending at a line end, never empty-by-construction
                assert span.node_start <= span.start < span.end <= span.node_end
                assert span.end == len(src) or src[span.end : span.end + 1] == b"\n"
                sample = make_sample(f, "sfim", random.Random(seed), fim_spm=0.5, sfim_spm=0.7, policy=policy)
                assert sample.prefix + sample.middle + sample.suffix == f.text
    assert {"Python", "Java", "TypeScript", "JavaScript", "C", "Go"} <= set(langs)


def test_sfim_counts_its_fallbacks(corpus):
    files = {f.path: f for f in all_files(corpus)}
    policy = DataConfig(sfim_policy="weighted").sfim
    for path in ("app/__init__.py", "app/models.py"):
        s = make_sample(files[path], "sfim", random.Random(0), fim_spm=0.5, sfim_spm=0.7, policy=policy)
        assert s.objective == "fim" and s.fallback == "no_function"


def test_sfim_anywhere_takes_a_node_where_no_function_has_one():
    text = "LIMITS = {\n    'a': (1, 2),\n    'b': (3, 4),\n}\nif LIMITS:\n    print(LIMITS)\n"
    f = SourceFile("consts.py", "Python", text)
    paper = DataConfig().sfim
    assert sfim_span(f, random.Random(0), paper) == "no_function"  # the paper's rule needs a function
    anywhere = DataConfig(sfim_scope="anywhere").sfim
    spans = [sfim_span(f, random.Random(seed), anywhere) for seed in range(30)]
    assert all(isinstance(sp, Span) and 0 <= sp.start < sp.end <= len(f.src) for sp in spans)
    assert len({sp.node for sp in spans}) > 1
    # a piece of the file (context level): the node lies inside the piece
    lo = text.index("if LIMITS")
    for seed in range(10):
        sp = sfim_span(f, random.Random(seed), anywhere, within=(lo, len(text)))
        assert lo <= sp.node_start and sp.end <= len(text)


def test_weighted_policy_yields_longer_middles_than_the_literal_rule(corpus):
    files = all_files(corpus)
    lengths = {}
    for name, policy in (
        ("literal", DataConfig().sfim),
        ("weighted", DataConfig(sfim_policy="weighted").sfim),
    ):
        rng = random.Random(1)
        spans = [s for f in files * 3 if isinstance(s := sfim_span(f, rng, policy), Span)]
        lengths[name] = np.percentile([s.end - s.start for s in spans], [50, 90])
    assert (lengths["weighted"] > 1.3 * lengths["literal"]).all(), lengths


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_order_is_a_permutation(corpus, strategy):
    for i in range(len(corpus)):
        _, files = corpus.read(i)
        for seed in range(3):
            got, order = order_files(files, random.Random(seed), {strategy: 1.0})
            assert got == strategy and sorted(order) == list(range(len(files)))


def _stdlib_files(names: list[str]) -> list[SourceFile]:
    return [SourceFile(n, "Python", stdlib(n.rsplit("/", 1)[-1])) for n in names]


def test_path_strategy_puts_each_anchor_after_its_k_nearest_files():
    names = ["pkg/a/x_util.py", "pkg/a/x_core.py", "pkg/a/y_util.py", "pkg/b/x_util.py", "pkg/b/z.py"]
    names += ["tests/test_x_util.py", "tests/test_z.py", "docs/conf.py", "pkg/a/__init__.py", "setup.py"]
    files = [SourceFile(n, "Python", "x = 1\n") for n in names]
    x = _path_vectors(files)
    for seed in range(20):
        groups = path_groups(files, random.Random(seed))
        order = path_order(files, random.Random(seed))
        assert sorted(order) == list(range(len(files)))
        left = set(range(len(files)))
        for near, anchor in groups:
            pos = order.index(anchor)
            assert [order.index(i) for i in near] == list(range(pos - len(near), pos))  # right before it
            others = sorted(left - {anchor})
            sim = {i: float((x[i] @ x[anchor].T).toarray()[0, 0]) for i in others}
            worst_kept = min((sim[i] for i in near), default=1.0)
            assert all(sim[i] <= worst_kept + 1e-9 for i in set(others) - set(near))  # the K nearest
            left -= {anchor, *near}


def test_content_strategy_shuffles_files_inside_a_cluster():
    files = _stdlib_files(["textwrap.py", "shlex.py", "colorsys.py", "bisect.py"])
    first = Counter(content_order(files, random.Random(seed), max_clusters=1)[0] for seed in range(800))
    assert set(first) == set(range(4)) and all(150 <= c <= 250 for c in first.values()), first
    central = Counter(content_central_order(files, random.Random(s), max_clusters=1)[0] for s in range(50))
    assert len(central) == 1  # our variant: always the most central file first


def test_dependencies_come_first_and_cycles_are_handled(corpus):
    _, files = corpus.read(corpus.repos.index("demo/polyglot"))
    paths = [f.path for f in files]
    deps = dependencies(files)
    edges = {(paths[i], paths[j]) for i, d in enumerate(deps) for j in d}
    assert {
        ("app/core.py", "app/util.py"),
        ("src/main/java/org/demo/Circle.java", "src/main/java/org/demo/Shape.java"),
        ("web/index.ts", "web/lib/math.js"),
        ("native/vec.c", "native/vec.h"),
        ("go/cmd/main.go", "go/geo/geo.go"),
        ("cycle/a.py", "cycle/b.py"),
        ("cycle/b.py", "cycle/a.py"),
    } <= edges
    for seed in range(5):
        order = dependency_kahn(deps, random.Random(seed))
        pos = {paths[i]: k for k, i in enumerate(order)}
        for user, dep in edges:
            if not user.startswith("cycle/"):
                assert pos[dep] < pos[user], (dep, user)
        assert sorted(order) == list(range(len(files)))
        walk = dependency_walk(deps, random.Random(seed))
        assert sorted(walk) == list(range(len(files)))
        pos = {i: k for k, i in enumerate(walk)}
        for i, d in enumerate(deps):  # reached from one of its imports, or a leaf once they are placed
            if d and not paths[i].startswith("cycle/"):
                assert min(pos[j] for j in d) < pos[i], paths[i]


def test_dependency_walk_follows_the_printed_loop():
    # util and config import nothing; model imports both; app imports model. The printed loop takes a
    # leaf, then walks up its chain of users: model comes right after the first leaf (before the other
    # one, line 40), then app; the other leaf comes last. Kahn's order puts both leaves first.
    util, config, model, app = range(4)
    deps = [set(), set(), {util, config}, {model}]
    walks = Counter(tuple(dependency_walk(deps, random.Random(seed))) for seed in range(200))
    assert set(walks) == {(util, model, app, config), (config, model, app, util)}
    assert min(walks.values()) > 60
    assert {tuple(dependency_kahn(deps, random.Random(s))[2:]) for s in range(50)} == {(model, app)}
    # a cycle has no leaf: the file importing the fewest unplaced files opens it (never c), then the
    # walk goes up to either of its users
    a, b, c = range(3)  # a <-> b, c imports a and b
    walks = {tuple(dependency_walk([{b}, {a}, {a, b}], random.Random(seed))) for seed in range(100)}
    assert walks == {(a, b, c), (a, c, b), (b, a, c), (b, c, a)}


def test_realized_rates_converge_to_the_configured_ones(corpus):
    cfg = DataConfig()
    n = 20_000
    objectives = Counter(draw(cfg.code_objectives, keyed_rng(0, 0, "repo", f"f{i}.py")) for i in range(n))
    for k, p in cfg.code_objectives.items():
        assert abs(objectives[k] / n - p) < 0.01
    strategies = Counter(draw(cfg.ordering, keyed_rng(0, 0, f"repo{i}")) for i in range(n))
    for k, p in cfg.ordering.items():
        assert abs(strategies[k] / n - p) < 0.01
    f = all_files(corpus)[0]
    spm = [
        make_sample(f, "fim", keyed_rng(i), fim_spm=0.5, sfim_spm=0.7, policy=cfg.sfim).spm
        for i in range(4000)
    ]
    assert abs(np.mean(spm) - 0.5) < 0.03


def windows(stream, n):
    return [next(stream) for _ in range(n)]


@pytest.mark.parametrize("level", ["context", "document"])
def test_stream_resumes_exactly(code_corpus, tok, level):
    cfg = DataConfig(seq_len=256, fim_level=level)
    a = TrainingStream(code_corpus, tok, cfg)
    states, got = [], []
    for _ in range(60):
        states.append(json.loads(json.dumps(a.state_dict())))  # survives a JSON round trip
        got.append(next(a))
    inside = [st for st in states if st["current"] and (st["current"]["offset"] or st["current"]["char"])]
    assert len(inside) > 10  # most saved states sit inside a split document or a file cut in pieces
    for k in (0, 7, 19, 33, 52):
        b = TrainingStream(code_corpus, tok, cfg)
        b.load_state_dict(states[k])
        for x, y in zip(got[k:], windows(b, 60 - k), strict=True):
            assert np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["objective"], y["objective"])


def test_shards_cover_every_repository_once(code_corpus, tok):
    cfg = DataConfig(seq_len=512)
    seen = []
    for rank in range(4):
        stats = StreamStats()
        s = TrainingStream(code_corpus, tok, cfg, rank=rank, world=4, stats=stats, epochs=1)
        assert all(len(w["tokens"]) == 513 for w in s)
        assert stats.repos == len(s.units("code", 0))  # one epoch read each of its repositories once
        seen += s.units("code", 0)
    n = len(CodeCorpus(code_corpus))
    assert sorted(seen) == list(range(n))
    # every epoch a new order of all repositories (a short run samples the corpus, not its head)
    one = TrainingStream(code_corpus, tok, cfg)
    orders = [one.units("code", e) for e in range(3)]
    assert all(sorted(o) == list(range(n)) for o in orders) and len({tuple(o) for o in orders}) == 3
    assert TrainingStream(code_corpus, tok, DataConfig(seq_len=512, shuffle_repos=False)).units(
        "code", 2
    ) == list(range(n))
    with pytest.raises(ValueError, match="fewer than"):
        TrainingStream(code_corpus, tok, cfg, world=16)


@pytest.mark.parametrize("level", ["context", "document"])
def test_packing_never_cuts_a_middle_masks_padding_and_loses_nothing(code_corpus, tok, corpus, level):
    stats = StreamStats()
    s = TrainingStream(code_corpus, tok, DataConfig(seq_len=128, fim_level=level), stats=stats, epochs=1)
    ids = {
        t: tok.token_id(t)
        for t in ("<fim_prefix>", "<fim_middle>", "<|endoftext|>", "<fim_pad>", "<file_sep>")
    }
    fim_docs = trained = 0
    for w in s:
        tokens, obj = w["tokens"], w["objective"]
        assert len(tokens) == 129
        padding = obj == Objective.PADDING
        assert np.array_equal(tokens[padding], np.full(padding.sum(), ids["<fim_pad>"]))
        assert (tokens[~padding] != ids["<fim_pad>"]).all()
        trained += int((~padding).sum())
        fim = np.isin(obj, (2, 3))
        if fim.any():  # FIM documents lie whole in the window: file_sep first, eos last
            starts = np.flatnonzero(fim & ~np.r_[False, fim[:-1]])
            ends = np.flatnonzero(fim & ~np.r_[fim[1:], False])
            for a, b in zip(starts, ends, strict=True):
                doc = tokens[a : b + 1].tolist()
                while doc:  # consecutive FIM documents share a run
                    assert doc[0] == ids["<file_sep>"]
                    end = doc.index(ids["<|endoftext|>"])
                    assert ids["<fim_middle>"] in doc[:end] and ids["<fim_prefix>"] in doc[:end]
                    doc = doc[end + 1 :]
                    fim_docs += 1
    assert fim_docs > 10
    summary = stats.summary()
    # 128-token windows force files into pieces (context) or their context out as NTP (document)
    assert summary["events"]["context_piece" if level == "context" else "fim_context_spilled"] > 0
    assert 0 < summary["padding_fraction"] < 0.5
    # what did not fit beside a middle was spilled as NTP or went on in pieces, not dropped
    content = sum(len(ids) for ids in tok.encode_batch([f.text for f in all_files(corpus)]))
    assert trained >= content


def test_both_layouts_train_the_same_span_twice(code_corpus, tok):
    cfg = DataConfig(
        seq_len=256, fim_layouts="both", code_objectives={"sfim": 0.5, "ntp": 0.5}, objective_unit="file"
    )
    s = TrainingStream(code_corpus, tok, cfg)
    made = [make() for unit in s.units("code", 0)[:4] for make in s.plan("code", unit, 0)]
    pairs = [docs for docs in made if docs[0].sample is not None and docs[0].sample.suffix is not None]
    singles = [docs for docs in made if docs[0].sample is not None and docs[0].sample.suffix is None]
    assert pairs and singles and all(len(docs) == 1 for docs in singles)  # NTP files: one document
    for psm, spm in pairs:
        assert (psm.sample.spm, spm.sample.spm) == (False, True)
        assert (psm.sample.prefix, psm.sample.middle, psm.sample.suffix) == (
            spm.sample.prefix,
            spm.sample.middle,
            spm.sample.suffix,
        )
    windows(s, 20)  # the packer takes a file's two documents as one group


def test_context_level_keeps_the_objective_mix_at_the_token_level(code_corpus, tok):
    """FIM and SFIM files only, 128-token windows: at context level the loss tokens are FIM and SFIM
    (NTP only from repository names); at document level most of each long file is spilled as NTP."""
    share = {}
    for level in ("context", "document"):
        stats = StreamStats()
        cfg = DataConfig(seq_len=128, fim_level=level, code_objectives={"sfim": 0.5, "fim": 0.5})
        for _ in TrainingStream(code_corpus, tok, cfg, stats=stats, epochs=1):
            pass
        t = stats.summary()["tokens_by_objective"]
        share[level] = t.get("ntp", 0) / (t.get("ntp", 0) + t.get("fim", 0) + t.get("sfim", 0))
        if level == "context":
            assert stats.docs > stats.files  # long files went in as several pieces
    assert share["context"] < 0.03 and share["document"] > 0.5, share


def test_text_source_gets_its_share(tok, tmp_path):
    from conftest import STDLIB, write_corpus

    files = sorted((STDLIB / "email").glob("*.py"))
    corpus = write_corpus(tmp_path / "corpus", {f"r/{f.stem}": {f.name: f.read_text()[:1500]} for f in files})
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": f.read_text()[-400:]}) + "\n" for f in files * 5))
    stats = StreamStats()
    s = TrainingStream(corpus, tok, DataConfig(seq_len=256, text=(str(path),), text_share=0.3), stats=stats)
    while s.cursor.epoch["code"] < 10:  # sources switch between units: the error is one unit
        next(s)
    emitted = s.cursor.emitted
    assert abs(emitted["text"] / (emitted["text"] + emitted["code"]) - 0.3) < 0.025
    assert stats.objectives["fim"] > 0 and s.cursor.epoch["text"] > 0


def test_bad_settings_say_what_to_do(code_corpus, tok):
    with pytest.raises(ValueError, match="allowed"):
        DataConfig(code_objectives={"sfim": 0.5, "span": 0.5})
    with pytest.raises(ValueError, match="needs data"):
        DataConfig(text_share=0.2)
    with pytest.raises(ValueError, match="unknown data settings"):
        DataConfig.from_dict({"seq_length": 4})
    assert (
        DataConfig.from_dict({"fim_spm_rate": "5e-1", "seq_len": "64"}).fim_spm_rate == 0.5
    )  # YAML's 5e-1 is text
    with pytest.raises(UserError, match=r"data\.seq_len: expected a number"):
        DataConfig.from_dict({"seq_len": "long"})
    with pytest.raises(ValueError, match="format"):
        TrainingStream(code_corpus, tok, DataConfig(format="aixcoder"))
    with pytest.raises(UserError, match="codemill curate"):
        CodeCorpus(code_corpus / "nowhere")


def test_runs_that_differ_only_in_file_order_draw_the_same_objective_per_repository(code_corpus, tok):
    """The ablation's paper vs paper-random-order: the ordering strategy consumes random draws, which must
    not change the objective a repository trains on."""
    drawn = {}
    for name, ordering in (("algorithm1", None), ("random", {"random": 1.0})):
        cfg = DataConfig(seq_len=256, **({"ordering": ordering} if ordering else {}))
        s = TrainingStream(code_corpus, tok, cfg)
        drawn[name] = [
            {d.drawn for make in s.plan("code", u, 0) for d in make() if d.drawn} for u in s.units("code", 0)
        ]
    assert drawn["algorithm1"] == drawn["random"] and any(len(x) == 1 for x in drawn["random"])


# --- issue 31: the stream audited -------------------------------------------------------------------
def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def test_sfim_treats_crlf_files_as_their_lf_twins():
    """The same real files with CRLF endings: the same candidate nodes per function, the same
    fallbacks, and the same spans with every LF byte offset shifted by the `\\r`s before it; no
    middle ends between `\\r` and `\\n`."""
    import tree_sitter

    from codemill.data.objectives import _inner_nodes, function_query

    policy = DataConfig().sfim
    assert isinstance(sfim_span(SourceFile("a.py", "Python", "def f(x):\r\n    return x + 1\r\n"),
                                random.Random(0), policy), Span)  # fmt: skip
    counts = {"lf": Counter(), "crlf": Counter()}
    for name in ("textwrap.py", "shlex.py", "json/decoder.py", "csv.py", "bisect.py"):
        lf = stdlib(name).replace("\r\n", "\n")
        for kind, text in (("lf", lf), ("crlf", _crlf(lf))):
            f = SourceFile(name, "Python", text)
            tree = f.tree()
            for fn in tree_sitter.QueryCursor(function_query("Python")).captures(tree.root_node)["f"]:
                counts[kind]["nodes"] += len(_inner_nodes(fn, f.src, 0, len(f.src)))
                counts[kind]["functions without a node"] += not _inner_nodes(fn, f.src, 0, len(f.src))
            for seed in range(40):
                s = make_sample(f, "sfim", random.Random(seed), fim_spm=0.5, sfim_spm=0.5, policy=policy)
                counts[kind][f"fallback {s.fallback}"] += 1
                if kind == "crlf" and s.objective == "sfim":
                    assert not s.middle.endswith("\r") and s.prefix + s.middle + s.suffix == text
                    counts[kind]["middle lines"] += s.middle.count("\r\n")
                elif s.objective == "sfim":
                    counts[kind]["middle lines"] += s.middle.count("\n")
    assert counts["lf"] == counts["crlf"] and counts["lf"]["nodes"] > 500, counts


def test_code_text_never_forges_a_sentinel_in_any_format_or_tokenizer_kind(tmp_path, code_corpus):
    """Every format, through a byte-level BPE trained for it and a SentencePiece model carrying its
    sentinels as user-defined pieces (as aiXcoder's does) or as ordinary ones (as CodeLlama's do):
    text that mimics each sentinel, bare, after a space and after a literal `▁`, stays text and
    reads back exactly."""
    import sentencepiece as spm

    from codemill.data.tokenizer import SPTokenizer, corpus_texts, train_bpe
    from codemill.formats import FORMATS

    texts = [t for t in corpus_texts(code_corpus, 200_000)]
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    for fmt in FORMATS.values():
        sentinels = [s for s in fmt.specials if s not in ("<s>", "</s>")]
        tokenizers = [HFTokenizer(train_bpe(texts, 600, fmt, show_progress=False))]
        for kind in ("user_defined_symbols", "control_symbols"):
            prefix = tmp_path / f"{fmt.name}-{kind}"
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=400 + len(sentinels),
                model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2,
                **{kind: sentinels},
            )  # fmt: skip
            tokenizers.append(SPTokenizer(f"{prefix}.model"))
        for tok in tokenizers:
            ids = {tok.token_id(s) for s in sentinels}
            for s in sentinels:
                core = s.removeprefix("▁")
                for mimic in (core, " " + core, "▁" + core, f"x = '{core}{core}'\n", f"# {s} and ▁▁ {s}\n"):
                    [got] = tok.encode_batch([mimic])
                    assert not ids & set(got), (fmt.name, type(tok).__name__, mimic)
                    assert tok.decode(got) == mimic, (fmt.name, type(tok).__name__, mimic)


def test_a_long_fim_document_spills_whole_characters(tmp_path, tok):
    from conftest import write_corpus

    text = 'x = "東京"\n' * 100 + "def f():\n    return 1\n"
    files = {f"m{i}.py": text.replace("x", f"v{i}") for i in range(40)}
    corpus = write_corpus(tmp_path / "c", {"org/cjk": files})
    cfg = DataConfig(seq_len=160, fim_level="document", code_objectives={"fim": 1.0}, shuffle_repos=False)
    stats = StreamStats()
    specials = {tok.token_id(t) for t in get_format("codemill").specials}
    runs = 0
    for w in TrainingStream(corpus, tok, cfg, stats=stats, epochs=1):
        tokens = w["tokens"].tolist()
        cuts = [i for i, t in enumerate(tokens) if t in specials]
        for a, b in itertools.pairwise(cuts):  # text runs bounded by specials on both sides
            if b > a + 1:
                assert "\ufffd" not in tok.decode(tokens[a + 1 : b]), tok.decode(tokens[a + 1 : b])
                runs += 1
    assert stats.summary()["events"]["fim_context_spilled"] >= 5 and runs > 20


def test_lines_are_cut_at_line_feeds_only():
    from codemill.data.repo import lines_of

    text = 'a = "x\u2028y"\nb = "\x0c"\rc\r\nd'
    assert lines_of(text) == ['a = "x\u2028y"\n', 'b = "\x0c"\rc\r\n', "d"]
    assert "".join(lines_of(text)) == text and lines_of("") == []


# --- issue 38: the trainer's DataLoader -------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_the_loader_gives_the_streams_batches_whatever_its_workers_and_records_what_was_taken(
    code_corpus, tok, workers
):
    """4 shards, 2 windows of each per step: the batches are the in-process streams' windows in shard
    order, and the recorded state is the one after the last step taken (workers pack ahead of it).
    3 workers would not divide the shards: 2 are used."""
    from codemill.data.loader import WindowLoader, worker_count

    assert [worker_count(w, 4) for w in range(6)] == [0, 1, 2, 2, 4, 4]

    cfg = DataConfig(seq_len=128)
    shards = [0, 1, 2, 3]
    streams = {s: TrainingStream(code_corpus, tok, cfg, rank=s, world=4) for s in shards}
    loader = WindowLoader(code_corpus, tok, cfg, shards, 4, 2, workers)
    for _ in range(3):
        tokens, codes = loader.next_step()
        want = [w for s in shards for w in windows(streams[s], 2)]
        assert tokens.dtype == codes.dtype == torch.int64 and tokens.shape == (8, 129)
        assert np.array_equal(tokens.numpy(), np.stack([w["tokens"] for w in want]))
        assert np.array_equal(codes.numpy(), np.stack([w["objective"] for w in want]))
    assert loader.state_dict() == {s: streams[s].state_dict() for s in shards}
    # from the recorded states, a new loader goes on with the next step
    again = WindowLoader(
        code_corpus,
        tok,
        cfg,
        shards,
        4,
        2,
        workers,
        {s: json.loads(json.dumps(st)) for s, st in loader.state_dict().items()},
    )
    assert torch.equal(again.next_step()[0], loader.next_step()[0])
    loader.close()
    again.close()


def test_old_checkpoint_states_load_into_the_typed_cursor(code_corpus, tok):
    """A `data-shard-S.json` as the untyped stream wrote it (no char / ntp before context level)."""
    s = TrainingStream(code_corpus, tok, DataConfig(seq_len=128))
    windows(s, 5)
    old = s.state_dict()
    assert set(old) == {"pos", "epoch", "emitted", "current"}
    assert set(old["current"]) == {"source", "unit", "epoch", "doc", "part", "offset", "char", "ntp"}
    b = TrainingStream(code_corpus, tok, DataConfig(seq_len=128))
    b.load_state_dict(
        {**old, "current": {k: v for k, v in old["current"].items() if k not in ("char", "ntp")}}
    )
    assert b.cursor.current.char == 0 and not b.cursor.current.ntp
