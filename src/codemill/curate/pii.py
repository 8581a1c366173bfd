"""PII and secrets in code, replaced by aiXcoder's tags; sensitive words drop the file.

Written here because no library fits code: Presidio and scrubadub flag dotted names as URLs and
damage half of all files, detect-secrets needs a temporary file per document (0.45 MB/s), and
StarPII needs a GPU. Detectors are regexes with code-aware exclusions (private and documentation
IPs, version strings, example domains, placeholders, organisations in copyright lines), scored on a
labelled set of real files with planted PII (`benchmarks/bench_pii.py`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass

import ahocorasick

from codemill.formats import PII_TAGS

TAGS = PII_TAGS

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b"
)
EXAMPLE_DOMAIN = re.compile(
    r"(^|\.)(example\.(com|org|net|edu)|[\w-]+\.example|localhost|test|invalid|local|domain\.com"
    r"|utf|iso|euc|ascii|latin)$",  # the last ones: locale names like sd_IN@devanagari.UTF-8
    re.I,
)
# the lookbehind follows the first digit, so the scan jumps from digit to digit (5x faster)
IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w.])")
IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){2,7}(?::|[0-9a-fA-F]{1,4})(?![\w:])|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4}(?![\w:])"
)
VERSION_CONTEXT = re.compile(r"(version|ver|release|v|==|>=|<=|~=)\s*[\"'=:(]?\s*$", re.I)
PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "208.67.222.222"}

KEY_FORMATS = re.compile(
    r"\b(AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|(?:sk|rk|pk)_(?:live|test)_[0-9a-zA-Z]{16,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{32,}|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z]{30,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
PRIVATE_KEY = re.compile(
    r"(-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----)([\s\S]+?)(-----END (?:[A-Z]+ )*PRIVATE KEY-----)"
)
SECRET_NAME = (
    r"[\w.-]*(?:secret|token|api_?key|apikey|access_?key|private_?key|auth_?key|signing_?key)[\w.-]*"
)
SECRET_ASSIGN = re.compile(rf"(?i)(\b{SECRET_NAME}[\"']?\s*(?::|=|:=|=>)\s*[\"'])([^\"'\s]{{16,}})([\"'])")
PASSWORD_ASSIGN = re.compile(
    r"(?i)(\b[\w.-]*(?:password|passwd|passphrase|pwd)[\"']?\s*(?::|=|:=|=>)\s*[\"'])([^\"'\s]{4,})([\"'])"
)
USER_ASSIGN = re.compile(
    r"(?i)(\b[\w.-]*(?:username|user_name|login_name|db_user|user_id|login)[\"']?\s*(?::|=|:=|=>)\s*[\"'])"
    r"([A-Za-z][\w.@-]{2,})([\"'])"
)
URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)([^\s:/@\"']+):([^\s@/\"']+)@", re.I)
NAME = r"[A-Z][^\W\d_]+(?:[- ](?:[A-Z]\.|[A-Z][^\W\d_]+|van|von|de|der|da|di|le|la))*[- ][A-Z][^\W\d_]+"
AUTHOR_LINE = re.compile(
    r"((?i:copyright\b|\(c\)|©|@author\b|__author__\s*=\s*[\"']|\bauthors?\s*:|\bwritten by\b"
    r"|\bmaintainer\s*:|\bcreated by\b)[ \t]*(?:\(c\)|©)?[ \t]*"
    rf"(?:\d{{4}}(?:[ \t]*[-,][ \t]*\d{{4}})*,?[ \t]*)?(?:by[ \t]+)?)({NAME})"
)
ORG_WORDS = re.compile(
    r"\b(Foundation|Inc|Corporation|Corp|Ltd|Limited|LLC|GmbH|Project|Team|Contributors|Authors"
    r"|Software|University|Institute|Group|Labs?|Company|Developers|Community|Organization"
    r"|Council|Consortium|Systems|Technologies|Association|Regents|Python|Apache|Google|Microsoft"
    r"|Facebook|Meta|Amazon|Oracle|Intel|Nvidia|Mozilla|Free|Open|The)\b"
)
PLACEHOLDER = re.compile(
    r"(?i)^(x+|\*+|\.+|changeme|password|passwd|secret|token|user(name)?|admin|root|test\w*|example\w*|"
    r"dummy\w*|fake\w*|your[\w-]*|my[\w-]*|<[^>]*>|\$\{?[\w.]+\}?|\{[\w.]*\}|%[\w()]+|none|null|"
    r"undefined|placeholder|sample\w*|foo\w*|bar\w*|abc\w*|123\w*)$"
)


@dataclass
class Redaction:
    text: str
    counts: Counter


def _entropy(s: str) -> float:
    c = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in c.values())


def _gibberish(s: str) -> bool:
    """A key, not a word or a path: long, mixed letters and digits, high entropy."""
    return (
        len(s) >= 16
        and any(ch.isdigit() for ch in s)
        and any(ch.isalpha() for ch in s)
        and "/" not in s
        and not PLACEHOLDER.match(s)
        and _entropy(s) >= 3.3
    )


def _public_ip(m: re.Match, line: str) -> bool:
    s = m.group(0)
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast or s in PUBLIC_RESOLVERS:
        return False
    if line[m.end() : m.end() + 1] == "/":
        return False  # a network in CIDR notation, not a host
    if ip.version == 6:
        return s.count(":") >= 4
    octets = [int(o) for o in s.split(".")]
    if octets[0] < 10 and all(o < 100 for o in octets[1:]):
        return False  # 1.2.3.4, 8.2.4.44: versions and section numbers far more often than hosts
    return not VERSION_CONTEXT.search(line[max(0, m.start() - 12) : m.start()])


def _url_credentials(m: re.Match, tag) -> str:
    pw = m.group(3)
    if PLACEHOLDER.match(pw) or pw.startswith(("$", "{", "%", "<")):
        return m.group(0)
    return f"{m.group(1)}{tag('USERNAME')}:{tag('PASSWORD')}@"


def _value(m: re.Match, tag, name: str, keep) -> str:
    return m.group(0) if keep(m.group(2)) else m.group(1) + tag(name) + m.group(3)


# (substrings that must occur in a lowercased line, pattern, replacement given the line and tag)
_DETECTORS = (
    (
        (
            "akia",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
            "xox",
            "aiza",
            "_live_",
            "_test_",
            "sk-",
            "glpat-",
            "hf_",
            "eyj",
        ),
        KEY_FORMATS,
        lambda m, line, tag: tag("KEY"),
    ),
    (
        ("secret", "token", "key"),
        SECRET_ASSIGN,
        lambda m, line, tag: _value(m, tag, "KEY", lambda v: not _gibberish(v)),
    ),
    (("://",), URL_CREDENTIALS, lambda m, line, tag: _url_credentials(m, tag)),
    (
        ("pass", "pwd"),
        PASSWORD_ASSIGN,
        lambda m, line, tag: _value(m, tag, "PASSWORD", lambda v: PLACEHOLDER.match(v) or v.startswith("<")),
    ),
    (
        ("user", "login"),
        USER_ASSIGN,
        lambda m, line, tag: _value(m, tag, "USERNAME", PLACEHOLDER.match),
    ),
    (
        ("@",),
        EMAIL,
        lambda m, line, tag: (
            m.group(0) if EXAMPLE_DOMAIN.search(m.group(1)) or m.group(0).startswith("git@") else tag("EMAIL")
        ),
    ),
    ((), IPV4, lambda m, line, tag: tag("IP_ADDRESS") if _public_ip(m, line) else m.group(0)),
    (("::",), IPV6, lambda m, line, tag: tag("IP_ADDRESS") if _public_ip(m, line) else m.group(0)),
    (
        ("copyright", "(c)", "©", "author", "written by", "maintainer", "created by"),
        AUTHOR_LINE,
        lambda m, line, tag: m.group(0) if ORG_WORDS.search(m.group(2)) else m.group(1) + tag("NAME"),
    ),
)


def _lower(text: str) -> str:
    """text.lower() with the same length, so positions in it are positions in text."""
    lower = text.lower()
    if len(lower) != len(text):  # "İ".lower() is two characters
        lower = "".join(c if len(low := c.lower()) != 1 else low for c in text)
    return lower


def _line_spans(text: str, lower: str, triggers: tuple[str, ...]) -> list[tuple[int, int]]:
    """(start, end) of every line holding a trigger, in order. str.find per trigger (C speed, no
    regex alternation); Python runs once per hit and skips the rest of a hit's line."""
    spans = set()
    for word in triggers:
        pos = lower.find(word)
        while pos >= 0:
            start = text.rfind("\n", 0, pos) + 1
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            spans.add((start, end))
            pos = lower.find(word, end)
    return sorted(spans)


def redact(text: str) -> Redaction:
    """Replace PII and secrets by their tags; `counts` says how many of each.

    A detector with trigger substrings runs only on the lines that hold one of them (found by one
    literal search per trigger), which keeps the slower regexes off most of the text."""
    counts: Counter = Counter()

    def tag(name: str) -> str:
        counts[name] += 1
        return f"<{name}>"

    if "PRIVATE KEY-----" in text:
        text = PRIVATE_KEY.sub(lambda m: m.group(1) + tag("KEY") + m.group(3), text)
    lower = None
    for triggers, pattern, replace in _DETECTORS:
        if pattern is None:
            continue
        if lower is None:
            lower = _lower(text)
        spans = _line_spans(text, lower, triggers) if triggers else [(0, len(text))]
        if not spans:
            continue
        parts, pos = [], 0
        for start, end in spans:
            line = text[start:end]
            parts.append(text[pos:start])
            parts.append(pattern.sub(lambda m, line=line, replace=replace: replace(m, line, tag), line))
            pos = end
        parts.append(text[pos:])
        new = "".join(parts)
        if new != text:
            text, lower = new, None
    return Redaction(text, counts)


class SensitiveWords:
    """Aho-Corasick over a word list, case-insensitive; a hit drops the file."""

    def __init__(self, words: list[str]):
        self.automaton = ahocorasick.Automaton() if words else None
        for w in words:
            self.automaton.add_word(w.lower(), w)
        if self.automaton:
            self.automaton.make_automaton()

    def find(self, text: str) -> str | None:
        if self.automaton is None:
            return None
        for _, word in self.automaton.iter(text.lower()):
            return word
        return None
