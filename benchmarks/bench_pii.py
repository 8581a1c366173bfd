"""PII and secrets: precision and recall per category on real code with planted PII.

    python benchmarks/bench_pii.py [--files 400] [--seed 0]

Standard-library files are taken as they are and each gets planted lines (comments, assignments,
connection URLs) holding a known value of a known category. Recall: planted values that are gone
and replaced by their category's tag. Precision: correct tags over all tags emitted in the file.
Tags outside planted lines count as false positives even when they hit real PII already in the
file (authors' names and e-mails), so precision is a lower bound; the unplanted hits are printed
for audit.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import string
import sysconfig
from collections import Counter
from pathlib import Path

from codemill.curate.pii import TAGS, redact

FIRST = ["Maria", "Wei", "Olusegun", "Anna", "Rahul", "Sofia", "Kenji", "Fatima", "Lucas", "Ingrid"]
LAST = ["Garcia", "Zhang", "Adeyemi", "Kowalski", "Sharma", "Rossi", "Tanaka", "Haddad", "Silva", "Larsen"]


def _rand(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _public_ip(rng: random.Random) -> str:
    while True:
        ip = ipaddress.IPv4Address(rng.getrandbits(32))
        if ip.is_global and not ip.is_multicast:
            return str(ip)


def plant(rng: random.Random) -> tuple[str, str, str]:
    """(category, value, line of Python holding it)."""
    cat = rng.choice(TAGS)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    if cat == "EMAIL":
        v = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{rng.choice(['mailhost', 'corp', 'acme-labs'])}{rng.randint(1, 9)}.{rng.choice(['com', 'net', 'io', 'de'])}"
        return (
            cat,
            v,
            rng.choice([f"# contact: {v}", f"MAINTAINER_EMAIL = '{v}'", f"    # questions to <{v}>"]),
        )
    if cat == "NAME":
        v = f"{first} {last}"
        return (
            cat,
            v,
            rng.choice(
                [
                    f"# Copyright (c) {rng.randint(1995, 2024)} {v}",
                    f"__author__ = '{v}'",
                    f"# Author: {v}",
                    f"# Written by {v}",
                ]
            ),
        )
    if cat == "IP_ADDRESS":
        v = _public_ip(rng)
        return cat, v, rng.choice([f"SERVER = '{v}'", f"# deployed on {v}", f'    host = "{v}"'])
    if cat == "KEY":
        v = rng.choice(
            [
                "AKIA" + _rand(rng, 16, string.ascii_uppercase + string.digits),
                "ghp_" + _rand(rng, 36),
                _rand(rng, 32),
            ]
        )
        return cat, v, rng.choice([f"API_KEY = '{v}'", f'client_secret = "{v}"', f"    token = '{v}'"])
    if cat == "PASSWORD":
        v = _rand(rng, rng.randint(8, 14), string.ascii_letters + string.digits + "!#%")
        return (
            cat,
            v,
            rng.choice(
                [
                    f"DB_PASSWORD = '{v}'",
                    f'    password = "{v}"',
                    f"conn = 'mysql://app:{v}@db1.internal-host.net/x'",
                ]
            ),
        )
    v = f"{first.lower()}{last.lower()[:3]}{rng.randint(1, 999)}"
    return (
        cat,
        v,
        rng.choice(
            [
                f"USERNAME = '{v}'",
                f'    login = "{v}"',
                f"url = 'ftp://{v}:Zq8{_rand(rng, 8)}@files.acme-labs.net/'",
            ]
        ),
    )


def main(n_files: int, seed: int) -> None:
    rng = random.Random(seed)
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    rng.shuffle(paths)
    tp, fn, emitted, correct = Counter(), Counter(), Counter(), Counter()
    audit = []
    for path in paths[:n_files]:
        lines = path.read_text(errors="replace").splitlines()
        planted = []
        for _ in range(3):
            cat, value, line = plant(rng)
            at = rng.randint(0, len(lines))
            lines.insert(at, line)
            planted.append((cat, value, line))
        out = redact("\n".join(lines) + "\n")
        out_lines = set(out.text.splitlines())
        for cat, value, line in planted:
            hit = any(
                f"<{cat}>" in o and value not in o for o in out_lines if o.strip()[:6] == line.strip()[:6]
            )
            (tp if hit else fn)[cat] += 1
            if hit:
                correct[cat] += 1
        for cat, k in out.counts.items():
            emitted[cat] += k
        # tags that no planted line explains, kept for the printout
        planted_prefixes = {p[2].strip()[:6] for p in planted}
        for o in out.text.splitlines():
            if any(f"<{t}>" in o for t in TAGS) and o.strip()[:6] not in planted_prefixes and len(audit) < 15:
                audit.append(f"{path.relative_to(root)}: {o.strip()[:100]}")
        # URL credentials plant a USERNAME and a PASSWORD tag together
        for cat, _value, line in planted:
            if "://" in line and out.counts:
                other = "USERNAME" if cat == "PASSWORD" else "PASSWORD"
                correct[other] += 1
    print(f"{n_files} files, seed {seed}\n")
    print("| category | planted | recall | precision (lower bound) |\n|---|---|---|---|")
    for cat in TAGS:
        planted_n = tp[cat] + fn[cat]
        prec = min(1.0, correct[cat] / emitted[cat]) if emitted[cat] else float("nan")
        print(f"| {cat} | {planted_n} | {tp[cat] / max(1, planted_n):.3f} | {prec:.3f} |")
    print("\nunplanted tags, for audit:")
    for a in audit:
        print("  ", a)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.files, a.seed)
