#!/usr/bin/env python3
"""Build the training corpus of the embedded default model from Debian packages.

Runs on a developer machine (Debian bookworm, network access to the Debian archive), not on the GPU
machine. Every source is a Debian package fetched with `apt-get download` and unpacked with
`dpkg-deb -x` into a cache folder (nothing is installed, except the small `bible-kjv` reader program,
which is the only way to decode the King James text it ships).

Output:
  WORK/raw/train.txt     training documents joined by the special token <|endoftext|>
  WORK/raw/heldout.txt   held-out documents (about 3 %, chosen by a hash of source + document name)
  WORK/raw/{train,heldout}.sources.txt   one line per document: source name and kind (prose|code)
  OUT/sources.json       per source: packages + versions, licence, copyright file, documents and bytes
WORK (default ~/.cache/indexcache-corpus) also holds the downloaded packages; it never travels.
OUT (default corpus/, ignored by git) is the folder that travels to the GPU machine: only the tokenized
corpus and small files go there (see train_tokenizer.py and synthetic.py).

Usage: python3 scripts/train/build_corpus.py [--out corpus] [--work DIR] [--scale 1.0]
Only the Python standard library is needed.
"""
import argparse
import glob
import gzip
import hashlib
import html
import html.parser
import io
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

EOT = "<|endoftext|>"
MAX_DOC = 48_000  # documents longer than this (chars) are cut at blank lines into pieces
HELDOUT_PERCENT = 3

# name, kind, packages, licence summary (read from each package's copyright file), budget in MB of text
SOURCES = [
    # ---- English prose ----
    dict(name="austen", kind="prose", packages=["r-cran-janeaustenr"], budget=5.0,
         licence="Public domain (Jane Austen's six novels, 1811-1818); R packaging MIT"),
    dict(name="kjv", kind="prose", packages=["bible-kjv-text"], budget=5.0,
         licence="Public domain (King James Version, 1611); Debian data: unrestricted use (Chip Chapin)"),
    dict(name="devils-dictionary", kind="prose", packages=["dict-devil"], budget=2.0,
         licence="Public domain (Ambrose Bierce, The Devil's Dictionary, 1911)"),
    dict(name="jargon-file", kind="prose", packages=["jargon-text"], budget=2.0,
         licence="Public domain (The Jargon File 4.4.7)"),
    dict(name="gcide", kind="prose", packages=["dict-gcide"], budget=3.0,
         licence="GPL-2+ (GNU Collaborative International Dictionary of English)"),
    dict(name="python-docs", kind="prose", packages=["python3.11-doc"], budget=8.0,
         licence="PSF-2.0 (Python 3.11 documentation sources)"),
    dict(name="linux-docs", kind="prose", packages=["linux-doc-6.1"], budget=8.0,
         licence="GPL-2 (Linux kernel Documentation/)"),
    dict(name="perl-docs", kind="prose", packages=["perl-doc"], budget=4.0,
         licence="GPL-1+ or Artistic (Perl 5.36 pod documentation)"),
    dict(name="debian-docs", kind="prose",
         packages=["debian-policy", "developers-reference", "maint-guide", "debian-reference-en"], budget=4.0,
         licence="GPL-2+ / GPL-2 / MIT (Debian Policy, Developer's Reference, New Maintainers' Guide, "
                 "Debian Reference)"),
    # ---- source code ----
    dict(name="python-stdlib", kind="code", packages=["libpython3.11-stdlib"], budget=7.0,
         licence="PSF-2.0 (CPython 3.11 standard library)"),
    dict(name="c-headers", kind="code", packages=["libc6-dev", "linux-libc-dev"], budget=3.5,
         licence="LGPL-2.1+ (GNU C Library headers); GPL-2 with Linux-syscall-note (kernel UAPI headers)"),
    dict(name="cpp-headers", kind="code", packages=["libstdc++-12-dev"], budget=3.0,
         licence="GPL-3+ with GCC Runtime Library Exception (libstdc++ headers)"),
    dict(name="c-sources", kind="code", packages=["newlib-source", "libxcrypt-source"], budget=4.0,
         licence="BSD-style and other permissive licences per file (newlib); LGPL-2.1+, BSD-3-Clause, "
                 "public domain (libxcrypt)"),
    dict(name="perl-modules", kind="code", packages=["perl-modules-5.36"], budget=2.0,
         licence="GPL-1+ or Artistic (Perl 5.36 core modules)"),
    dict(name="go-sources", kind="code", packages=["golang-golang-x-tools-dev"], budget=2.5,
         licence="BSD-3-Clause (golang.org/x/tools)"),
    dict(name="rust-sources", kind="code", packages=["librust-regex-dev"], budget=1.0,
         licence="MIT or Apache-2.0 (regex crate 1.7.1)"),
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# package handling
# ----------------------------------------------------------------------------------------------
def fetch(pkg, cache):
    """apt-get download + dpkg-deb -x into cache/root/pkg; returns (root, version)."""
    debs = os.path.join(cache, "debs")
    root = os.path.join(cache, "root", pkg)
    os.makedirs(debs, exist_ok=True)
    found = sorted(glob.glob(os.path.join(debs, pkg + "_*.deb")))
    if not found:
        r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        found = sorted(glob.glob(os.path.join(debs, pkg + "_*.deb")))
        if not found:
            raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr.strip()[-400:]} "
                               "(run 'apt-get update' first)")
    deb = found[-1]
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True, text=True).stdout.strip()
    if not os.path.isdir(root):
        tmp = root + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        os.rename(tmp, root)
    return root, version


def copyright_path(root, pkg):
    p = os.path.join(root, "usr/share/doc", pkg, "copyright")
    return p if os.path.exists(p) else None


def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz") or path.endswith(".dz"):
        data = gzip.decompress(data)
    return data


def to_text(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text, code=False):
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL.sub("", text)
    text = text.replace(EOT, "<|end of text|>")
    lines = [ln.rstrip() for ln in text.split("\n")]
    if code:
        lines = [ln for ln in lines if len(ln) <= 400]  # drop minified / data lines
    text = "\n".join(lines)
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n")


def split_doc(name, text):
    """Cut a long document at blank lines into pieces of at most MAX_DOC chars."""
    if len(text) <= MAX_DOC:
        return [(name, text)]
    out, cur, n = [], [], 0
    for para in text.split("\n\n"):
        if n + len(para) > MAX_DOC and cur:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(para)
        n += len(para) + 2
    if cur:
        out.append("\n\n".join(cur))
    return [(f"{name}#{i}", t) for i, t in enumerate(out)]


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd", "table",
             "section", "blockquote"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.skip:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(s):
    p = _HTMLText()
    p.feed(s)
    text = "".join(p.parts)
    text = "\n".join(ln.strip() if not ln.startswith("    ") else ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", html.unescape(text))


# ----------------------------------------------------------------------------------------------
# R lazy-load database reader (for janeaustenr's character vectors; R itself is not needed)
# ----------------------------------------------------------------------------------------------
class _RUnserialize:
    def __init__(self, b):
        self.b, self.p, self.refs = b, 0, []

    def i32(self):
        v = struct.unpack(">i", self.b[self.p:self.p + 4])[0]
        self.p += 4
        return v

    def header(self):
        if self.b[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.p = 2
        version = self.i32()
        self.i32(), self.i32()
        if version == 3:
            n = self.i32()
            self.p += n

    def item(self):
        f = self.i32()
        t, has_attr, has_tag = f & 0xFF, f & (1 << 9), f & (1 << 10)
        if t in (254, 253, 242, 241, 251, 247):
            return None
        if t == 255:
            idx = f >> 8 or self.i32()
            return self.refs[idx - 1]
        if t == 1:
            v = ("sym", self.item())
            self.refs.append(v)
            return v
        if t == 2:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            car, cdr = self.item(), self.item()
            return [(tag, car)] + (cdr if isinstance(cdr, list) else [])
        if t == 9:
            n = self.i32()
            if n == -1:
                return None
            v = self.b[self.p:self.p + n].decode("utf-8", "replace")
            self.p += n
            return v
        if t in (10, 13):
            n = self.i32()
            v = list(struct.unpack(">%di" % n, self.b[self.p:self.p + 4 * n]))
            self.p += 4 * n
        elif t == 14:
            n = self.i32()
            v = list(struct.unpack(">%dd" % n, self.b[self.p:self.p + 8 * n]))
            self.p += 8 * n
        elif t in (16, 19):
            n = self.i32()
            v = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R type {t} not handled")
        if has_attr:
            return ("attr", v, self.item())
        return v


def _r_load(b):
    r = _RUnserialize(b)
    r.header()
    return r.item()


def _r_attr(obj, name):
    if isinstance(obj, tuple) and obj[0] == "attr":
        for tag, val in obj[2]:
            if tag == ("sym", name):
                return val
    return None


def read_rdata_strings(data_dir):
    """{name: [str,...]} for every character vector in an R package's data/Rdata.{rdx,rdb}."""
    idx = _r_load(gzip.decompress(open(os.path.join(data_dir, "Rdata.rdx"), "rb").read()))
    top = idx[1]
    names = _r_attr(idx, "names")
    variables = top[names.index("variables")]
    var_names = _r_attr(variables, "names")
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    out = {}
    for (off, ln), nm in zip(variables[1], var_names):
        chunk = rdb[off:off + ln]
        obj = _r_load(zlib.decompress(chunk[4:]))
        if isinstance(obj, tuple):
            obj = obj[1]
        if isinstance(obj, list) and all(x is None or isinstance(x, str) for x in obj):
            out[nm] = ["" if x is None else x for x in obj]
    return out


# ----------------------------------------------------------------------------------------------
# readers: each yields (doc_name, text)
# ----------------------------------------------------------------------------------------------
def files_under(root, patterns):
    out = []
    for pat in patterns:
        out += glob.glob(os.path.join(root, pat), recursive=True)
    return sorted(set(p for p in out if os.path.isfile(p) and not os.path.islink(p)))


def read_austen(roots):
    data = read_rdata_strings(os.path.join(roots["r-cran-janeaustenr"], "usr/lib/R/site-library/janeaustenr/data"))
    for nm in sorted(data):
        text = "\n".join(data[nm])
        # one document per chapter
        parts = re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+\b)", text)
        for i, p in enumerate(parts):
            yield f"{nm}/{i:03d}", p


def read_kjv(roots):
    if shutil.which("bible") is None:
        log("  installing bible-kjv (the reader program for the KJV data)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "bible-kjv"], check=True, capture_output=True)
    books = ["Gen", "Exo", "Lev", "Num", "Deu", "Jos", "Jdg", "Rut", "1Sa", "2Sa", "1Ki", "2Ki", "1Ch", "2Ch",
             "Ezr", "Neh", "Est", "Job", "Psa", "Pro", "Ecc", "Son", "Isa", "Jer", "Lam", "Eze", "Dan", "Hos",
             "Joe", "Amo", "Oba", "Jon", "Mic", "Nah", "Hab", "Zep", "Hag", "Zec", "Mal", "Mat", "Mar", "Luk",
             "Joh", "Act", "Rom", "1Co", "2Co", "Gal", "Eph", "Phi", "Col", "1Th", "2Th", "1Ti", "2Ti", "Tit",
             "Phm", "Heb", "Jam", "1Pe", "2Pe", "1Jo", "2Jo", "3Jo", "Jud", "Rev"]
    data_dir = os.path.join(roots["bible-kjv-text"], "usr/lib")
    for b in books:
        r = subprocess.run(["bible", "-p", data_dir, "-l2000", f"{b}1:1-{b}150:200"], capture_output=True, text=True)
        # output: a "Book N" line per chapter, then one "  V text" line per verse
        text = "\n".join(ln.strip() for ln in r.stdout.split("\n"))
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        if len(text) > 200:
            yield b, text


def read_dict(path):
    text = to_text(read_bytes(path))
    # drop the dictd header entries (00-database-*)
    text = re.sub(r"\A(?:00-database-[^\n]*\n(?:[^\n]*\n)*?(?=\S))+", "", text)
    return text


def read_devil(roots):
    yield "devil", read_dict(os.path.join(roots["dict-devil"], "usr/share/dictd/devil.dict.dz"))


def read_gcide(roots):
    yield "gcide", read_dict(os.path.join(roots["dict-gcide"], "usr/share/dictd/gcide.dict.dz"))


def read_jargon(roots):
    yield "jargon", to_text(read_bytes(os.path.join(roots["jargon-text"], "usr/share/doc/jargon-text/jargon.txt.gz")))


def read_python_docs(roots):
    base = os.path.join(roots["python3.11-doc"], "usr/share/doc/python3.11/html/_sources")
    for p in files_under(base, ["**/*.rst.txt"]):
        if "/whatsnew/changelog" in p:
            continue
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_linux_docs(roots):
    base = os.path.join(roots["linux-doc-6.1"], "usr/share/doc/linux-doc-6.1/Documentation")
    for p in files_under(base, ["**/*.rst.gz", "**/*.txt.gz"]):
        if "/translations/" in p or "/ABI/" in p or "/devicetree/" in p:
            continue
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_perl_docs(roots):
    base = os.path.join(roots["perl-doc"], "usr/share/perl/5.36.0/pod")
    for p in files_under(base, ["*.pod"]):
        if re.search(r"perl5\d+delta|perl\d+delta|perlhist", p):
            continue
        yield os.path.basename(p), to_text(read_bytes(p))


def read_debian_docs(roots):
    pol = os.path.join(roots["debian-policy"], "usr/share/doc/debian-policy")
    for p in files_under(pol, ["*.txt.gz", "fhs/*.txt.gz"]):
        yield "policy/" + os.path.basename(p), to_text(read_bytes(p))
    dr = os.path.join(roots["developers-reference"], "usr/share/developers-reference")
    for p in files_under(dr, ["_sources/*.rst.txt"]):
        yield "devref/" + os.path.basename(p), to_text(read_bytes(p))
    mg = os.path.join(roots["maint-guide"], "usr/share/doc/maint-guide/maint-guide.en.txt.gz")
    if os.path.exists(mg):
        yield "maint-guide", to_text(read_bytes(mg))
    ref = os.path.join(roots["debian-reference-en"], "usr/share/debian-reference")
    for p in files_under(ref, ["*.en.html"]):
        yield "reference/" + os.path.basename(p), html_to_text(to_text(read_bytes(p)))


def read_python_stdlib(roots):
    base = os.path.join(roots["libpython3.11-stdlib"], "usr/lib/python3.11")
    for p in files_under(base, ["**/*.py"]):
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_c_headers(roots):
    for pkg in ("libc6-dev", "linux-libc-dev"):
        base = os.path.join(roots[pkg], "usr/include")
        for p in files_under(base, ["**/*.h"]):
            yield pkg + ":" + os.path.relpath(p, base), to_text(read_bytes(p))


def read_cpp_headers(roots):
    base = os.path.join(roots["libstdc++-12-dev"], "usr/include/c++/12")
    for p in files_under(base, ["**/*"]):
        if p.endswith((".gch", ".so")):
            continue
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_c_sources(roots):
    tarp = glob.glob(os.path.join(roots["newlib-source"], "usr/src/newlib/*.tar.xz"))
    if tarp:
        with tarfile.open(tarp[0], "r:xz") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith((".c", ".h")) and "/testsuite/" not in m.name and m.size < 200_000:
                    yield m.name, to_text(tf.extractfile(m).read())
    base = os.path.join(roots["libxcrypt-source"], "usr/src/libxcrypt")
    for p in files_under(base, ["**/*.c", "**/*.h"]):
        yield "libxcrypt/" + os.path.relpath(p, base), to_text(read_bytes(p))


def read_perl_modules(roots):
    base = os.path.join(roots["perl-modules-5.36"], "usr/share/perl/5.36.0")
    for p in files_under(base, ["**/*.pm", "**/*.pl"]):
        if "/unicore/" in p:
            continue
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_go(roots):
    base = os.path.join(roots["golang-golang-x-tools-dev"], "usr/share/gocode/src")
    for p in files_under(base, ["**/*.go"]):
        if "/testdata/" in p:
            continue
        yield os.path.relpath(p, base), to_text(read_bytes(p))


def read_rust(roots):
    base = os.path.join(roots["librust-regex-dev"], "usr/share/cargo/registry")
    for p in files_under(base, ["**/*.rs"]):
        yield os.path.relpath(p, base), to_text(read_bytes(p))


READERS = {
    "austen": read_austen, "kjv": read_kjv, "devils-dictionary": read_devil, "jargon-file": read_jargon,
    "gcide": read_gcide, "python-docs": read_python_docs, "linux-docs": read_linux_docs,
    "perl-docs": read_perl_docs, "debian-docs": read_debian_docs, "python-stdlib": read_python_stdlib,
    "c-headers": read_c_headers, "cpp-headers": read_cpp_headers, "c-sources": read_c_sources,
    "perl-modules": read_perl_modules, "go-sources": read_go, "rust-sources": read_rust,
}


def is_heldout(src, doc):
    h = int(hashlib.sha1(f"{src}/{doc}".encode()).hexdigest()[:8], 16)
    return h % 100 < HELDOUT_PERCENT


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="corpus")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/indexcache-corpus"),
                    help="downloads, unpacked packages and raw text (never travels)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every budget")
    ap.add_argument("--only", default=None, help="comma-separated source names (testing)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    cache = args.work
    raw = os.path.join(args.work, "raw")
    os.makedirs(raw, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None

    train_docs, held_docs, report = [], [], []
    for src in SOURCES:
        if only and src["name"] not in only:
            continue
        roots, versions, copyrights = {}, {}, {}
        for pkg in src["packages"]:
            roots[pkg], versions[pkg] = fetch(pkg, cache)
            cp = copyright_path(roots[pkg], pkg)
            copyrights[pkg] = f"/usr/share/doc/{pkg}/copyright" if cp else None
        code = src["kind"] == "code"
        docs = []
        for name, text in READERS[src["name"]](roots):
            text = clean(text, code=code)
            if len(text) < 200:
                continue
            docs.extend(split_doc(name, text))
        rng = random.Random(f"{args.seed}/{src['name']}")
        rng.shuffle(docs)
        budget = int(src["budget"] * args.scale * 1e6)
        n_tr = n_ho = b_tr = b_ho = 0
        total = sum(len(t) for _, t in docs)
        for name, text in docs:
            if b_tr + b_ho >= budget:
                break
            if is_heldout(src["name"], name):
                held_docs.append((src["name"], src["kind"], text))
                n_ho += 1
                b_ho += len(text)
            else:
                train_docs.append((src["name"], src["kind"], text))
                n_tr += 1
                b_tr += len(text)
        # keep the source tag with the document for the sentence pools (prose only)
        rec = dict(name=src["name"], kind=src["kind"], licence=src["licence"],
                   packages=[dict(package=p, version=versions[p], copyright=copyrights[p]) for p in src["packages"]],
                   available_chars=total, train_docs=n_tr, train_chars=b_tr, heldout_docs=n_ho, heldout_chars=b_ho)
        report.append(rec)
        log(f"{src['name']:18s} {src['kind']:5s} train {n_tr:5d} docs {b_tr/1e6:6.2f} MB  heldout {n_ho:4d} docs "
            f"{b_ho/1e6:5.2f} MB  (of {total/1e6:.1f} MB)")

    # shuffle documents across sources (deterministic), write
    rng = random.Random(args.seed)
    rng.shuffle(train_docs)
    rng.shuffle(held_docs)
    for split, docs in (("train", train_docs), ("heldout", held_docs)):
        with open(os.path.join(raw, split + ".txt"), "w", encoding="utf-8") as f:
            f.write(EOT.join(t for _, _, t in docs))
        # one line per document: source and kind (the synthetic filler pools use prose documents only)
        with open(os.path.join(raw, split + ".sources.txt"), "w") as f:
            f.writelines(f"{n}\t{k}\n" for n, k, _ in docs)
    tot_tr = sum(len(d[2]) for d in train_docs)
    tot_ho = sum(len(d[2]) for d in held_docs)
    meta = dict(separator=EOT, heldout_percent=HELDOUT_PERCENT, seed=args.seed, scale=args.scale,
                train_docs=len(train_docs), train_chars=tot_tr, heldout_docs=len(held_docs), heldout_chars=tot_ho,
                sources=report)
    with open(os.path.join(args.out, "sources.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log(f"total: train {len(train_docs)} docs {tot_tr/1e6:.1f} MB, heldout {len(held_docs)} docs {tot_ho/1e6:.2f} MB")


if __name__ == "__main__":
    main()
