"""PII and secrets in code, replaced by aiXcoder's tags; sensitive words drop the file.

Written here because no library fits code: Presidio and scrubadub flag dotted names as URLs and
damage half of all files, detect-secrets needs a temporary file per document (0.45 MB/s), and
StarPII needs a GPU. Detectors are regexes with code-aware exclusions (private and documentation
IPs, version strings, example domains, placeholders, organisations in copyright lines), scored on a
labelled set of real files with planted PII (`benchmarks/bench_pii.py`).

They know the code around them (issue 29): a dotted quad in an OID (`ObjectIdentifier("1.3.101.112")`,
a file of OIDs) is not an IP; an SSH algorithm or extension name (`sk-ssh-ed25519@openssh.com`), a
`name@version` spec, a decorator or a matrix product (`L@D@L.conjugate()`) is not an e-mail (an
e-mail's domain ends in a country code or a common generic TLD); license boilerplate ("COPYRIGHT
HOLDERS BE LIABLE") and organisations are not names. Nor is personal data (`_Context`, measured by
benchmarks/curate_quality.py: false replacements 120 of 311 -> 4 of 231): an address in a file about
addresses (four or more public ones: ipaddress's tests, an IPv6 library's docs) or on a line giving
an example; a role or list mailbox (info@, -sig@, -list@), a doctest's address or a URL's user; a
password or user name without digits in a test module or in a comment or docstring (a fixture or
an example), or made of placeholder words. No replacement spans a line end, and `redact`
given the file's language reverts, line by line, any replacement after which the file no longer
parses or has another line count (`Redaction.reverted` counts them).
"""

from __future__ import annotations

import ast
import ipaddress
import math
import re
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import accumulate
from typing import NamedTuple
from urllib.parse import unquote

import hyperscan
import numpy as np

from codemill.curate import vectorscan
from codemill.formats import PII_TAGS

TAGS = PII_TAGS

EMAIL = re.compile(
    r"(?<![\w.+@-])([A-Za-z0-9][A-Za-z0-9._%+-]*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.([A-Za-z]{2,}))\b(?![(@-])"
)
# An e-mail domain ends in a country code (any two letters but code file extensions) or one of these
# generic TLDs; `D@L.conjugate()`, `x@self.weight`, `user@dom.ain` (CPython's test fixtures) do not.
_GENERIC = (
    "com net org edu gov mil int info biz name pro aero coop museum mobi asia tel travel jobs cat app "
    "dev cloud tech online site xyz email company systems solutions network digital global group "
    "studio design life live world today space store shop blog news media one top club agency academy "
    "center consulting engineering software science technology works zone team tools codes computer "
    "host hosting link page website services support foundation institute university school expert "
    "lab ninja rocks berlin london paris tokyo nyc amsterdam google microsoft apple amazon"
)
GENERIC_TLDS = frozenset(_GENERIC.split())
NOT_COUNTRY = frozenset({"py", "js", "ts", "rb", "kt", "hh", "mm"})
# SSH algorithm and extension names are `name@domain` (RFC 4251 section 6), not addresses
SSH_DOMAINS = frozenset({"openssh.com", "openssh.org", "libssh.org", "ssh.com"})
SSH_NAME = re.compile(
    r"(?i)^(?:sk-)?(?:ssh|ecdsa|rsa|dsa|ed25519|ed448|aes\d*|chacha20|hmac|umac|curve\d+|sntrup\d+|mlkem"
    r"|diffie|kex|zlib|ext-info|webauthn|posix|statvfs|fstatvfs|hardlink|fsync|lsetstat|limits|expand"
    r"|copy|home|users|keepalive|no-touch|verify|restrict|agent|hostkeys|publickey|server-sig|ping)"
)
VERSION_DOMAIN = re.compile(r"^\d+(?:\.\d+)+(?:[.-]|$)")  # lodash@4.17.21, eslint@8.0.0-beta.rc
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
OID_LINE = re.compile(r"ObjectIdentifier|object_identifier|\bOID|OID\b|\boid|\w_oid\b")
OID_FILE = re.compile(r"ObjectIdentifier|OBJECT IDENTIFIER|\bOID\b|\boids?\b")
VERSION_CONTEXT = re.compile(
    r"(version|ver|release|v|==|>=|<=|~=|section|sec\.|§|chapter|clause|step|rfc\s*\d+)\s*[\"'=:(]?\s*$", re.I
)
PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "208.67.222.222"}
DOC_IPS = {"123.45.67.89", "12.34.56.78", "98.76.54.32", "11.22.33.44", "123.123.123.123", "111.111.111.111"}

KEY_FORMATS = re.compile(
    r"\b(AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|(?:sk|rk|pk)_(?:live|test)_[0-9a-zA-Z]{16,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{32,}|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z]{30,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
# the body of a key block: base64 lines (with headers such as Proc-Type, and the quotes, `\n` escapes
# and concatenation of a key written as a string); `BEGIN ...-----"\n_END = b"-----END` is not one
PRIVATE_KEY = re.compile(
    r"(-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----)([A-Za-z0-9+/=\s\\\"'(),:-]*?)(-----END (?:[A-Z]+ )*PRIVATE KEY-----)"
)
BASE64_RUN = re.compile(r"(?<!\\)[A-Za-z0-9+/]{16,}={0,2}")  # not the `n` of a `\n` escape
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
# a host must follow: `github://org:repo@/path` is fsspec's syntax for a repository, not a login
URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)([^\s:/@\"']+):([^\s@/\"']+)@(?=[\w\[])", re.I)
NAME = r"[A-Z][^\W\d_]+(?:[- ](?:[A-Z]\.|[A-Z][^\W\d_]+|van|von|de|der|da|di|le|la))*[- ][A-Z][^\W\d_]+"
AUTHOR_LINE = re.compile(
    r"((?i:copyright\b|\(c\)|©|@author\b|__author__\s*=\s*[\"']|\bauthors?\s*:|\bwritten by\b"
    r"|\bmaintainer\s*:|\bcreated by\b)[ \t]*(?:\(c\)|©)?[ \t]*"
    rf"(?:\d{{4}}(?:[ \t]*[-,][ \t]*\d{{4}})*,?[ \t]*)?(?:by[ \t]+)?)({NAME})"
)
ORG_WORDS = re.compile(
    r"\b(Foundation|Inc|Corporation|Corp|Ltd|Limited|LLC|GmbH|Project|Team|Contributors|Authors"
    r"|Software|University|Institute|Group|Labs?|Company|Developers|Community|Organization"
    r"|Council|Consortium|Systems|Technologies|Technology|Association|Regents|Python|Apache|Google"
    r"|Microsoft|Facebook|Meta|Amazon|Oracle|Intel|Nvidia|Mozilla|Free|Open|The|AI|Research|Networks?"
    r"|Intelligence|Government|Studios?|Robotics|Analytics|Computing|Solutions|Holdings|Industries"
    r"|Industrial|Electronics|Communications|Labs|Laboratory|Laboratories|Sciences?|Academy|Stichting"
    r"|Centrum|Centre|Center|BV|NV|AG|AB|SA|SE|KG|Oy|ASA|SpA|SPA|Srl|SRL|LLP|PLC)\b"
)
# license and copyright boilerplate a name pattern would take: "COPYRIGHT HOLDERS BE LIABLE",
# "Copyright Holder", "All Rights Reserved"
BOILERPLATE = re.compile(
    r"(?i)\b(holders?|owners?|contributors|rights|reserved|notice|licen[cs]e[ds]?|warrant\w*|liable"
    r"|provided|permission|software|work|works|statement|agreement|licensor|copyright)\b"
)
# an organisation's suffix after the name: "Vigil Security, LLC", "NVIDIA CORPORATION & AFFILIATES"
ORG_SUFFIX = re.compile(
    r"(?i)[ \t]*,?[ \t]*(?:Inc\b|LLC\b|L\.L\.C\.|Ltd\b|GmbH\b|Corp\b|Co\.|AG\b|AB\b|S\.?A\.?\b"
    r"|B\.?V\.?\b|PLC\b|Pty\b|& affiliates|and affiliates)"
)
PLACEHOLDER = re.compile(
    r"(?i)^(x+|\*+|\.+|changeme|password|passwd|secret|token|user(name)?|admin|root|test\w*|example\w*|"
    r"dummy\w*|fake\w*|your[\w-]*|my[\w-]*|<[^>]*>|\$\{?[\w.]+\}?|\{[\w.]*\}|%[\w()]+|none|null|"
    r"undefined|placeholder|sample\w*|foo\w*|bar\w*|abc\w*|123\w*|pass|pw|redacted\w*|current|default"
    r"|anonymous|guest|nobody|some(?:one|body|1)?|unknown|me|self|blah\w*)$"
)


@dataclass
class Redaction:
    text: str
    counts: Counter
    reverted: int = 0  # replacements undone: the file parsed before them and not after (`redact`)


def _entropy(s: str) -> float:
    c = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in c.values())


KEY_CHARS = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")  # base64, base64url, hex: what keys are written in
# a CamelCase name of two or more words ("HiggsAudioV2TokenizerModel"), not a random key
CAMEL_NAME = re.compile(r"(?:[A-Z][a-z]{2,}|[A-Z]{1,3}(?![a-z])|\d{1,2}){2,}")


def _gibberish(s: str) -> bool:
    """A key, not a word, a path, a version spec or a URN: long, in a key's alphabet, mixed letters
    and digits, high entropy. A `/` is taken only in a run of 30 or more (an AWS secret key)."""
    return (
        len(s) >= 16
        and KEY_CHARS.fullmatch(s) is not None
        and ("/" not in s or (len(s) >= 30 and "//" not in s and not s.startswith("/")))
        and any(ch.isdigit() for ch in s)
        and any(ch.isalpha() for ch in s)
        and not PLACEHOLDER.match(s)
        and not (CAMEL_NAME.fullmatch(s) and len(re.findall(r"[A-Z][a-z]{2,}", s)) >= 2)
        and _entropy(s) >= 3.3
    )


def _line_of(text: str, m: re.Match) -> str:
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    return text[start : len(text) if end < 0 else end]


# a test module (Python's unittest or pytest, JavaScript's describe/it): its addresses and logins
# are fixtures
TEST_FILE = re.compile(
    r"^(?:import (?:unittest|pytest)\b|from (?:unittest|pytest|test\.support|test) import\b)"
    r"|\bunittest\.TestCase\b|^[ \t]*(?:describe|it|test)\(['\"`]",
    re.M,
)
# lines of documentation: comment lines, doctest lines, and (below) docstrings and block comments
_COMMENT_LINE = re.compile(r"^[ \t]*(?:#|//|\*|/\*|>>>|\.\.\.[ \t])", re.M)
_NEWLINE = re.compile("\n")
ADDRESS_FILE = 4  # public addresses from which a file is about addresses (a parser's tests, docs)
EXAMPLE_CUE = re.compile(r"(?i)\b(?:e\.g\.|ex:|for example|example|such as|i\.e\.)")


class _Context:
    """What a detector may ask about the file around a match, each computed on first use (most
    files never ask): whether it is a test module, whether a line is documentation, whether the
    file is about IP addresses. `line` is the number of the first line of the span being scanned
    (replacements keep lines, so line numbers hold across detectors) and `span` its text."""

    def __init__(self, original: str, lang: str | None):
        self.original, self.lang = original, lang
        self.line, self.span = 0, original
        self._test: bool | None = None
        self._doc: set[int] | None = None
        self._addresses: bool | None = None

    @property
    def test(self) -> bool:
        if self._test is None:
            self._test = TEST_FILE.search(self.original) is not None
        return self._test

    @property
    def about_addresses(self) -> bool:
        if self._addresses is None:
            text = self.original
            found = [m for m in IPV4.finditer(text) if _public_ip(m, text)]
            if "::" in text:
                found += [m for m in IPV6.finditer(text) if _public_ip(m, _line_of(text, m))]
            self._addresses = len(found) >= ADDRESS_FILE
        return self._addresses

    def documentation(self, pos: int) -> bool:
        """Whether the line holding `pos` (in the scanned span) is a comment, doctest or docstring
        line."""
        if self._doc is None:
            self._doc = self._doc_lines()
        return self.line + self.span.count("\n", 0, pos) in self._doc

    def _doc_lines(self) -> set[int]:
        text = self.original
        starts = [0, *(m.end() for m in _NEWLINE.finditer(text))]
        line = lambda pos: bisect_right(starts, pos) - 1  # noqa: E731
        doc = {line(m.start()) for m in _COMMENT_LINE.finditer(text)}
        pattern = _LITERALS.get(self.lang or "")
        for m in pattern.finditer(text) if pattern is not None else ():
            if m.group(0)[:3] in ('"""', "'''") or m.group(0)[:2] == "/*":
                first = line(m.start())
                opens_line = not text[starts[first] : m.start()].strip(" \t=(")
                doc.update(range(first if opens_line else first + 1, line(m.end() - 1) + 1))
        return doc


def _host_ip(m: re.Match, line: str, ctx: _Context) -> bool:
    """Whether an address is a host's: a public one (`_public_ip`) outside a file about addresses
    (ipaddress's tests, asyncio's tests that use one address five times, an IPv6 library's docs, a
    PII filter's own fixtures) and a line that gives an example; not a version (`Guile
    3.0.5.130-5a1e7`) nor an IPv6 of small decimal groups (`123:2:3:4:5:6:7:8`)."""
    if not _public_ip(m, line):
        return False
    s = m.group(0)
    if ":" in s and all(len(g) <= 3 and g.isdigit() for g in s.split(":") if g):
        return False
    if re.match(r"-\w", line[m.end() : m.end() + 2]):
        return False
    if ctx.about_addresses:
        return False
    return not EXAMPLE_CUE.search(_line_of(line, m))


def _public_ip(m: re.Match, line: str) -> bool:
    s = m.group(0)
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast or s in PUBLIC_RESOLVERS or s in DOC_IPS:
        return False
    if line[m.end() : m.end() + 1] == "/":
        return False  # a network in CIDR notation, not a host
    if ip.version == 6:
        return s.count(":") >= 4
    octets = [int(o) for o in s.split(".")]
    if (octets[0] < 10 and all(o < 100 for o in octets[1:])) or all(o < 30 for o in octets):
        return False  # 1.2.3.4, 8.2.4.44, 17.4.1.7: versions and section numbers, not hosts
    if octets[0] <= 2 and (OID_LINE.search(_line_of(line, m)) or _oid_file(line)):
        return False  # an OID (first arc 0, 1 or 2): ObjectIdentifier("1.3.101.112"), a file of OIDs
    return not VERSION_CONTEXT.search(line[max(0, m.start() - 12) : m.start()])


@lru_cache(maxsize=2)
def _oid_file(text: str) -> bool:
    """Whether a text is about OIDs; asked once per file (IPv4 matches get the whole text)."""
    return OID_FILE.search(text) is not None


# test-fixture domains: a@b.com, foo@bar.com, Mr.A@somewhere.com, jo@email.com
FIXTURE_DOMAIN = re.compile(
    r"(?:^|\.)(?:[a-z0-9]|foo|bar|baz|qux|spam|eggs|somewhere\w*|nowhere|elsewhere|your\w*|my\w*"
    r"|e?mail|domain|company)\.[a-z]+$"
)
# Role and list mailboxes are an organisation's, not a person's (BigCode's PII annotation guide
# leaves them too): info@pythonware.com, email-sig@python.org, python-list@python.org,
# sendmail-bugs@sendmail.org, public-prov-comments@w3.org.
ROLE_LOCAL = re.compile(
    r"(?i)^(?:info|contact|support|help|helpdesk|admin|administrator|webmaster|postmaster|hostmaster"
    r"|no-?reply|do-?not-?reply|sales|security|abuse|privacy|legal|licensing|press|office|team|hello"
    r"|feedback|enquiries|inquiries|bugs?|issues|maintainers?|dev|devel|opensource|oss|mailer-daemon)$"
    r"|[-_.](?:sig|list|lists|bugs?|dev|devel|users?|announce|request|comments|help|owner|admin|discuss"
    r"|maintainers|team|security|core|commits)$"
)
MESSAGE_ID = re.compile(r"[0-9a-f.-]{16,}|[\d.]+", re.I)  # <15090.61304.110929.45684@aaa.zzz.org>
# User:Pass@www.python.org (not "mailto:", "email:" and the like before an address)
USERINFO = re.compile(
    r"(?<![\w.+-])(?!(?:mailto|e-?mail|mail|contact|from|to|cc|author|maintainer):)[\w.%+-]+:$", re.I
)


def _email(m: re.Match, line: str) -> bool:
    """Whether an address-shaped match is an e-mail address."""
    local, domain, tld = m.group(1), m.group(2).lower(), m.group(3).lower()
    if EXAMPLE_DOMAIN.search(domain) or FIXTURE_DOMAIN.search(domain) or local == "git":
        return False
    if ROLE_LOCAL.search(local) or line.lstrip().startswith(">>>"):
        return False  # info@pythonware.com, python-list@python.org; a doctest's example addresses
    if line[max(0, m.start() - 3) : m.start()] == "://":
        return False  # the user of a URL: azure://container@account.blob.core.windows.net
    if MESSAGE_ID.fullmatch(local):
        return False
    if USERINFO.search(line, max(0, m.start() - 64), m.start()):
        return False  # the password of a URL's user:password@host
    country = len(tld) == 2 and tld not in NOT_COUNTRY
    if not country and tld not in GENERIC_TLDS:
        return False  # D@L.conjugate(), x@self.weight, test@dom.ain
    if VERSION_DOMAIN.match(domain):
        return False  # pkg@1.2.3.beta
    return not (domain in SSH_DOMAINS and SSH_NAME.match(local))


def _name(m: re.Match, line: str) -> bool:
    """Whether a name after "Copyright", "Author" and the like is a person's."""
    name = m.group(2)
    if name.isupper() or ORG_WORDS.search(name) or BOILERPLATE.search(name):
        return False  # COPYRIGHT HOLDERS BE LIABLE, NVIDIA CORPORATION, Mistral AI
    return not ORG_SUFFIX.match(line, m.end())


EXAMPLE_HOST = re.compile(r"[\w.-]*?(?:\bexample\.(?:com|org|net)|\.example)\b", re.I)


def _url_credentials(m: re.Match, line: str, tag, ctx: _Context) -> str:
    pw = m.group(3)
    if _not_password(pw) or pw.startswith(("$", "{", "%", "<")) or EXAMPLE_HOST.match(line, m.end()):
        return m.group(0)
    if _example(pw, m.start(), ctx):
        return m.group(0)
    return f"{m.group(1)}{tag('USERNAME')}:{tag('PASSWORD')}@"


_KEY_NAME = re.compile(r"([\w.-]+)[\"']?\s*(?::|=|:=|=>)\s*[\"']$")


def _own_name(m: re.Match) -> bool:
    """Whether the value is its key's own name: `USER_ID: "userID"`, `CHALLENGE_PASSWORD:
    "challengePassword"` (a table of field names, not a credential)."""
    key = _KEY_NAME.search(m.group(1))
    fold = lambda s: s.replace("_", "").replace("-", "").lower()  # noqa: E731
    return key is not None and fold(key.group(1).rsplit(".", 1)[-1]) == fold(m.group(2))


def _value(m: re.Match, tag, name: str, keep) -> str:
    return m.group(0) if keep(m.group(2)) or _own_name(m) else m.group(1) + tag(name) + m.group(3)


FIELD_NAME = re.compile(
    r"(?:[a-z_]+\.)+(?:password|passwd|pass|pwd|user|username|login|name|key|secret)|[a-z_]+(?:\.[a-z_]+){2,}"
    r"|\w*pass(?:word|wd)\w*",
    re.I,
)


_WORD = re.compile(r"[A-Za-z0-9]+")


def _not_password(v: str) -> bool:
    """A placeholder or a field's name (`"ssl.key.password"`, `DB_USER = "db.user"`), not a value:
    also a mask without letters or digits (pip's `":****"`) and a value of placeholder words
    (httpx's `a%20secret`, pydantic's `123,foo:bar`)."""
    if PLACEHOLDER.match(v) or v.startswith("<") or FIELD_NAME.fullmatch(v):
        return True
    words = _WORD.findall(unquote(v))
    if not words:
        return True
    return len(words) > 1 and all(len(w) < 3 or PLACEHOLDER.match(w) for w in words)


def _example(value: str, pos: int, ctx: _Context) -> bool:
    """A credential of words without digits in a test module or in documentation: a fixture or an
    example (`"wile", "coyote"` in test_urllib2, `passwd='geheim$parole'` in urllib's docs); a
    value with digits there is still taken (a real one pasted into a comment)."""
    return not any(ch.isdigit() for ch in value) and (ctx.test or ctx.documentation(pos))


def _credential(m: re.Match, tag, name: str, ctx: _Context) -> str:
    """A password or user name assigned a literal, unless it is a placeholder or an example."""
    if _example(m.group(2), m.start(), ctx):
        return m.group(0)
    return _value(m, tag, name, _not_password)


def _private_key(m: re.Match, tag) -> str:
    """The key's base64 replaced by one tag, its lines, quotes and escapes kept (so is the file's
    syntax and line count); a block without base64 (a marker constant) is left alone."""
    first = []
    body = BASE64_RUN.sub(lambda r: "" if first else first.append(1) or tag("KEY"), m.group(2))
    return m.group(0) if body == m.group(2) else m.group(1) + body + m.group(3)


class Detector(NamedTuple):
    """A PII detector: `pattern` runs on the lines holding one of `triggers` (lowercased; none: the
    whole text) and `replace` gives a match's replacement (given the match, its line, `tag` and the
    file's `_Context`). `near` and `needs` only narrow the lines scanned, never what matches: `near`
    is a Vectorscan pattern every match implies in the lowercased UTF-8 line (its lookarounds left
    out, Python's Unicode classes widened to any non-ASCII byte), `needs` a test of the line's
    characters."""

    triggers: tuple[str, ...]
    pattern: re.Pattern
    replace: Callable
    near: bytes | None = None
    needs: Callable[[str], bool] | None = None


def _assigns_literal(line: str) -> bool:
    """`name = "value"`, `"name": "value"`: an operator and a quote."""
    return ("=" in line or ":" in line) and ('"' in line or "'" in line)


_HEX = rb"[0-9a-f]{1,4}"
_DETECTORS = (
    Detector(
        (
            *("akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza"),
            *("_live_", "_test_", "sk-", "glpat-", "hf_", "eyj"),
        ),
        KEY_FORMATS,
        lambda m, line, tag, ctx: tag("KEY"),
    ),
    Detector(
        ("secret", "token", "key"),
        SECRET_ASSIGN,
        lambda m, line, tag, ctx: _value(m, tag, "KEY", lambda v: not _gibberish(v)),
        # the name, then its operator; "\xc5\xbf" is the long s, which (?i) takes for an s
        near=rb"(?:secret|\xc5\xbfecret|token|key)[\w.\-\x80-\xff]*[\"']?[\s\x1c-\x1f\x80-\xff]*[:=]",
        needs=_assigns_literal,
    ),
    Detector(("://",), URL_CREDENTIALS, lambda m, line, tag, ctx: _url_credentials(m, line, tag, ctx)),
    Detector(
        ("pass", "pwd"),
        PASSWORD_ASSIGN,
        lambda m, line, tag, ctx: _credential(m, tag, "PASSWORD", ctx),
        needs=_assigns_literal,
    ),
    Detector(
        ("user", "login"),
        USER_ASSIGN,
        lambda m, line, tag, ctx: _credential(m, tag, "USERNAME", ctx),
        needs=_assigns_literal,
    ),
    Detector(
        ("@",),
        EMAIL,
        lambda m, line, tag, ctx: tag("EMAIL") if _email(m, line) else m.group(0),
        near=rb"[a-z0-9._%+\-]@[a-z0-9\-]+\.",  # a local part's last character: not a decorator
    ),
    Detector((), IPV4, lambda m, line, tag, ctx: tag("IP_ADDRESS") if _host_ip(m, line, ctx) else m.group(0)),
    Detector(
        ("::",),
        IPV6,
        lambda m, line, tag, ctx: tag("IP_ADDRESS") if _host_ip(m, line, ctx) else m.group(0),
        # a group of hex digits not after a word character: not C++'s `std::vector`
        near=rb"(?:^|[^a-z0-9_:])" + _HEX + rb":(?:" + _HEX + rb")?:",
    ),
    Detector(
        ("copyright", "(c)", "©", "author", "written by", "maintainer", "created by"),
        AUTHOR_LINE,
        lambda m, line, tag, ctx: m.group(1) + tag("NAME") if _name(m, line) else m.group(0),
    ),
)


def _lower(text: str) -> str:
    """text.lower() with the same length, so positions in it are positions in text."""
    lower = text.lower()
    if len(lower) != len(text):  # "İ".lower() is two characters
        lower = "".join(c if len(low := c.lower()) != 1 else low for c in text)
    return lower


# a dotted quad anywhere: the IPv4 detector (which reads the whole text) runs only where there is one
_DOTTED_QUAD = rb"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"


@cache
def _trigger_scanner() -> tuple[hyperscan.Database, tuple[int, ...]]:
    """One Vectorscan database of every detector's triggers or `near` pattern (caseless) and the
    dotted quad, and the detector of each pattern id (-1: the dotted quad). One pass over a file
    finds them all; a `str.find` per trigger was half of redaction's time (36 triggers, 36 passes)."""
    patterns, owner = [], []
    for k, d in enumerate(_DETECTORS):
        for p in [d.near] if d.near else [re.escape(w).encode("utf-8") for w in d.triggers]:
            patterns.append(p)
            owner.append(k)
    db = vectorscan.database(
        [*patterns, _DOTTED_QUAD],
        [hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_MULTILINE] * len(patterns)
        + [hyperscan.HS_FLAG_SINGLEMATCH],
    )
    return db, (*owner, -1)


def _scan_bytes(text: str) -> bytes:
    """What the triggers are looked for in: ASCII text as it is (the search is caseless, which is
    lowercasing for ASCII), other text lowercased (`_lower`) in UTF-8. Lines are the same: no
    character's encoding holds a newline byte but the newline's."""
    return text.encode("ascii") if text.isascii() else _lower(text).encode("utf-8", "surrogatepass")


def _trigger_lines(text: str) -> tuple[list[set[int]], bool]:
    """Per detector, the numbers of the lines holding one of its triggers (or a match of its `near`
    pattern); and whether the text holds a dotted quad."""
    db, owner = _trigger_scanner()
    data = _scan_bytes(text)
    ids: list[int] = []
    ends: list[int] = []

    def hit(i: int, _start: int, end: int, _flags: int, _ctx) -> None:
        ids.append(i)
        ends.append(end)

    db.scan(data, match_event_handler=hit)
    found: list[set[int]] = [set() for _ in _DETECTORS]
    if not ids:
        return found, False
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    quad = False
    # a match's line: the newlines before its last byte
    for i, line in zip(ids, np.searchsorted(newlines, np.array(ends) - 1).tolist(), strict=True):
        if owner[i] < 0:
            quad = True
        else:
            found[owner[i]].add(line)
    return found, quad


def _scans(d: Detector, line: str, lower: str | None = None) -> bool:
    """Whether detector d looks at a line that passed the database's search (or a changed line:
    `lower` given, the triggers are asked too)."""
    if d.needs is not None and not d.needs(line):
        return False
    if lower is None and d.near is None:
        return True  # the database found a trigger
    return any(w in line for w in d.triggers) or any(w in (lower or _lower(line)) for w in d.triggers)


def _retrigger(found: list[set[int]], after: int, i: int, line: str) -> None:
    """A replacement changed line i: which later detectors look at it now (a tag can bring a
    trigger: `<PASSWORD>` holds "pass", or take one away)."""
    lower = _lower(line)
    for k in range(after + 1, len(_DETECTORS)):
        if _DETECTORS[k].triggers and _scans(_DETECTORS[k], line, lower):
            found[k].add(i)
        else:
            found[k].discard(i)


def redact(text: str, lang: str | None = None) -> Redaction:
    """Replace PII and secrets by their tags; `counts` says how many of each.

    A detector with trigger substrings runs only on the lines that hold one of them (found for all
    detectors in one pass), which keeps the slower regexes off most of the text. No replacement
    changes the line count (else all are undone). Given the file's language (the table's name), a
    file that parsed before and not after gets back the lines whose replacement broke it
    (`reverted` counts the replacements undone, `counts` leaves them out): Python by `ast.parse`,
    languages with a tree-sitter grammar by their count of error nodes."""
    counts: Counter = Counter()

    def tag(name: str) -> str:
        counts[name] += 1
        return f"<{name}>"

    original = text
    if "PRIVATE KEY-----" in text:
        text = PRIVATE_KEY.sub(lambda m: _private_key(m, tag), text)
    ctx = _Context(original, lang)
    found, quad = _trigger_lines(text)
    lines = text.split("\n")
    for k, (triggers, pattern, replace, *_) in enumerate(_DETECTORS):
        if not triggers:  # the whole text, where it holds a match at all
            if not quad:
                continue
            whole = "\n".join(lines)
            ctx.line, ctx.span = 0, whole
            new = pattern.sub(lambda m, whole=whole, replace=replace: replace(m, whole, tag, ctx), whole)
            if new != whole:
                before, lines = lines, new.split("\n")
                for i in (i for i, (a, b) in enumerate(zip(before, lines, strict=True)) if a != b):
                    _retrigger(found, k, i, lines[i])
            continue
        for i in sorted(found[k]):
            line = lines[i]
            if not _scans(_DETECTORS[k], line):
                continue
            ctx.line, ctx.span = i, line
            new = pattern.sub(lambda m, line=line, replace=replace: replace(m, line, tag, ctx), line)
            if new != line:
                lines[i] = new
                _retrigger(found, k, i, new)
    if not counts:
        return Redaction(text, counts)
    return _guard(original, "\n".join(lines), counts, lang)


_TAG = re.compile(r"<(" + "|".join(TAGS) + r")>")


def _guard(original: str, text: str, counts: Counter, lang: str | None) -> Redaction:
    """The redaction, less the lines after which the file does not parse or has other lines."""
    if text.count("\n") != original.count("\n"):
        return Redaction(original, Counter(), sum(counts.values()))
    parse = _Parse.of(lang, original) if lang else None
    if parse is None:
        return Redaction(text, counts)
    before, after = original.split("\n"), text.split("\n")
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    if _in_literals(lang, original, before, after, changed, parse.comment):
        return Redaction(text, counts)  # replaced inside strings and comments only: nothing can break
    if not parse.worse(text):
        return Redaction(text, counts)
    culprits = []
    for i in changed:
        alone = before.copy()
        alone[i] = after[i]
        if parse.worse("\n".join(alone)):
            culprits.append(i)
    kept = after.copy()
    for i in culprits:
        kept[i] = before[i]
    if parse.worse("\n".join(kept)):  # replacements that break it only together: undo all
        culprits, kept = changed, before
    undone: Counter = Counter()
    for i in culprits:
        undone.update(_TAG.findall(after[i]))
        undone.subtract(_TAG.findall(before[i]))
    left = Counter({k: n for k, n in (counts - undone).items() if n > 0})
    return Redaction("\n".join(kept), left, sum(n for n in undone.values() if n > 0))


# strings and comments, found lexically (10x faster than a parse): a tag replacing text inside one
# cannot break the file, since tags hold no quote, bracket or line end
_PY_LITERALS = re.compile(r"#[^\n]*|(\"\"\"|''')[\s\S]*?(?<!\\)\1|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'")
_C_LITERALS = re.compile(
    r"//[^\n]*|/\*[\s\S]*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`"
)
_LITERALS = {
    "Python": _PY_LITERALS,
    **dict.fromkeys(("C", "C++", "Java", "JavaScript", "TypeScript", "C#", "Go"), _C_LITERALS),
}


def _changed_stretch(a: str, b: str) -> tuple[int, int]:
    """[lo, hi) of line `a` that differs from `b` (common prefix and suffix left out)."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    q = 0
    while q < n - p and a[-1 - q] == b[-1 - q]:
        q += 1
    return p, len(a) - q


def _inside_on_line(line: str, lo: int, hi: int, comment: str | None) -> bool:
    """Whether [lo, hi) lies in a string that opens and closes on this line, or after a comment
    marker outside one (quotes counted from the line start: wrong only inside a multi-line string,
    where the stretch is text anyway)."""
    for quote in "\"'`":
        before = line.count(quote, 0, lo) - line.count("\\" + quote, 0, lo)
        if before % 2 and quote in line[hi:]:
            return True
    if comment:
        at = line.find(comment, 0, lo)
        if at >= 0 and not any((line.count(q, 0, at) - line.count("\\" + q, 0, at)) % 2 for q in "\"'"):
            return True
    return False


def _in_literals(
    lang: str, original: str, before: list[str], after: list[str], changed: list[int], comment: str | None
) -> bool:
    """Whether every changed stretch of a line lies inside one string or comment of the original:
    by the line alone when it can tell, else by a lexical scan of the file up to the last change."""
    stretches = {i: _changed_stretch(before[i], after[i]) for i in changed}
    unsure = [i for i in changed if not _inside_on_line(before[i], *stretches[i], comment)]
    if not unsure:
        return True
    pattern = _LITERALS.get(lang)
    if pattern is None:
        return False
    line_start = [0, *accumulate(map(len, before))]
    last = line_start[unsure[-1]] + unsure[-1] + stretches[unsure[-1]][1]
    spans = []
    for m in pattern.finditer(original):
        spans.append(m.span())
        if m.end() >= last:
            break
    starts = [a for a, _ in spans]
    for i in unsure:
        lo, hi = (line_start[i] + i + x for x in stretches[i])
        k = bisect_right(starts, lo) - 1
        if k < 0 or spans[k][1] < hi:
            return False
    return True


def _ts_errors(lang: str, text: str) -> int:
    """ERROR and MISSING nodes in tree-sitter's tree."""
    from codemill.langs import ts_parser

    parser = ts_parser(lang)
    tree = parser.parse(text.encode("utf-8"))
    parser.reset()
    n, stack = 0, [tree.root_node] if tree.root_node.has_error else []
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            n += 1
            continue
        stack.extend(c for c in node.children if c.has_error or c.is_missing)
    return n


def _ast_parses(text: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like
        try:
            ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


class _Parse:
    """Whether a redacted text parses worse than the original: tree-sitter's error nodes grew (fast;
    redaction runs on every kept file) and, for Python, `ast.parse` rejects it too."""

    def __init__(self, lang: str, original: str, comment: str | None):
        self.lang, self.original, self.comment = lang, original, comment
        self._errors: int | None = None

    @classmethod
    def of(cls, lang: str, original: str) -> _Parse | None:
        from codemill.langs import BY_NAME, ts_language

        if lang not in BY_NAME or ts_language(lang) is None:
            return None
        return cls(lang, original, BY_NAME[lang].line_comment)

    def worse(self, text: str) -> bool:
        errors = _ts_errors(self.lang, text)
        if errors == 0:
            return False
        if self._errors is None:
            self._errors = _ts_errors(self.lang, self.original)
        if errors <= self._errors:
            return False
        return not (self.lang == "Python" and _ast_parses(text))


class SensitiveWords:
    """A case-insensitive search for a word list (Vectorscan's literal matcher, one pass); a hit
    drops the file. The word named is the one that ends first in the text, the longest of those
    that end there."""

    def __init__(self, words: list[str]):
        self.words = {w.lower(): w for w in words}  # a word given twice in two cases: the last one
        self._db: hyperscan.Database | None = None

    def find(self, text: str) -> str | None:
        if not self.words:
            return None
        if self._db is None:  # made on first use: a Database does not pickle
            words = [w.encode("utf-8", "surrogatepass") for w in self.words]
            self._db = vectorscan.database(
                words, hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH, literal=True
            )
        data = text.encode("ascii") if text.isascii() else text.lower().encode("utf-8", "surrogatepass")
        ends: list[tuple[int, int]] = []
        self._db.scan(data, match_event_handler=lambda i, _s, end, _f, _c: ends.append((end, i)))
        if not ends:
            return None
        lower = list(self.words)
        first = min(end for end, _ in ends)
        word = max((lower[i] for end, i in ends if end == first), key=len)
        return self.words[word]
