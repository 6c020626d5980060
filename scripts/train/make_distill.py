#!/usr/bin/env python3
"""Write data/distill.txt: the indexer-distillation set of the embedded model (`indexcache distill`'s
default data), from TRAINING documents and the training pool of the synthetic tasks.

  /opt/ref/py scripts/train/make_distill.py [--out data] [--work DIR] [--tokenizer models/dsa-mini/tokenizer.json]

Input: WORK/raw/train.txt and WORK/raw/{train,heldout}.sources.txt, raw/heldout.txt (build_corpus.py),
the committed evaluation files data/heldout.txt, data/calibration.txt, data/retrieval_*.jsonl
(make_data.py), and the model's tokenizer (the one train_tokenizer.py made; no corpus/ needed).

data/distill.txt   documents joined by <|endoftext|> (the format of heldout.txt):
  - training documents in the order of raw/train.txt (shuffled across sources by build_corpus.py, so
    prose and code in the training mix), about 16 windows of 4097 tokens;
  - synthetic long-range examples (passkey, kv, copy in turn; 768-3072 tokens; kv and copy ask up to
    4 questions, each followed by its answer, as train.py's --queries does), made from the TRAINING
    sentence pool of synthetic.py (the pool build_kit makes, same seed) and rendered as text, each
    its own document, interleaved so that they make about one window for every four of text.
  Deterministic: the same inputs give the same file.

Disjointness (asserted; the counts are printed): a candidate document or example is left out when
  - it equals or contains a held-out document (any of raw/heldout.txt), or
  - it shares a substring of 200 characters with data/heldout.txt, data/calibration.txt or the text
    (prompt + answer) of data/retrieval_*.jsonl, or
  - one of its lines of >= 120 characters occurs in data/heldout.txt or data/calibration.txt (what
    tests/test_data_split.cpp checks).
No repeated boilerplate is allowed through: a training document that shares a licence header or a
parallel Bible passage with the evaluation files is skipped whole, and the file written is checked
again at the end (0 shared 200-character substrings, 0 shared long lines, 0 held-out documents).
"""
import argparse
import collections
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402

EOT = "<|endoftext|>"
WINDOW = 4097
SUB = 200        # shared substring length that disqualifies
LONG_LINE = 120  # line length checked by tests/test_data_split.cpp


class EvalIndex:
    """Hashes of every SUB-character substring of the evaluation texts, and their long lines."""

    def __init__(self, texts, line_texts):
        self.joined = "\x00".join(texts)
        self.hashes = set()
        for t in texts:
            for i in range(len(t) - SUB + 1):
                self.hashes.add(hash(t[i:i + SUB]))
        self.line_text = "\x00".join(line_texts)

    def shared_substrings(self, doc):
        """Start offsets in `doc` of SUB-character substrings that occur in the evaluation texts."""
        out = []
        for i in range(len(doc) - SUB + 1):
            s = doc[i:i + SUB]
            if hash(s) in self.hashes and s in self.joined:
                out.append(i)
        return out

    def shared_lines(self, doc):
        return [ln for ln in doc.split("\n") if len(ln) >= LONG_LINE and ln in self.line_text]


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split(EOT)


def load_eval(data):
    held = read_docs(os.path.join(data, "heldout.txt"))
    calib = read_docs(os.path.join(data, "calibration.txt"))
    retrieval = []
    for p in sorted(glob.glob(os.path.join(data, "retrieval_*.jsonl"))):
        with open(p, encoding="utf-8") as f:
            retrieval += [json.loads(ln) for ln in f if ln.strip()]
    texts = [EOT.join(held), EOT.join(calib)] + [r["prompt"] + r["answer"] for r in retrieval]
    return texts, [EOT.join(held), EOT.join(calib)], len(retrieval)


def synthetic_example(kit, rng, task, length, max_queries):
    """(text, ids) of one training-pool example, question(s) and answer(s) included."""
    if task == "passkey" or max_queries <= 1:
        prompt, answer = synthetic.make_parts(kit, rng, task, length, "train")
        parts = prompt + answer
    else:
        parts = [p for chunk, _ in synthetic._multi_query_parts(kit, rng, task, length, "train", max_queries)
                 for p in chunk]
    ids, text = synthetic.assemble(kit, parts, "train", with_text=True)
    return text, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data", help="where distill.txt goes; the evaluation files are read from here")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/indexcache-corpus"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "models", "dsa-mini", "tokenizer.json"))
    ap.add_argument("--text-windows", type=float, default=16)
    ap.add_argument("--synth-per-text", type=float, default=0.25, help="synthetic tokens per text token")
    ap.add_argument("--synth-len", default="768,3072")
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--seed", type=int, default=4097)
    a = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(a.tokenizer)
    n_tok = lambda s: len(tok.encode(s, add_special_tokens=False).ids)  # noqa: E731

    eval_texts, line_texts, n_retrieval = load_eval(a.out)
    index = EvalIndex(eval_texts, line_texts)
    heldout_raw = [d for d in read_docs(os.path.join(a.work, "raw", "heldout.txt")) if d]
    heldout_set = set(heldout_raw)
    print(f"evaluation index: {len(index.hashes)} substrings of {SUB} chars "
          f"(heldout, calibration, {n_retrieval} retrieval examples); {len(heldout_raw)} held-out documents")

    # The training sentence pool exactly as synthetic.build_kit makes it (rng seed 7, train pool first).
    kit_rng = np.random.default_rng(7)
    pieces = {p: np.asarray(tok.encode(p, add_special_tokens=False).ids, np.int64) for p in synthetic.all_pieces()}
    pool_tr, txt_tr = synthetic._sentence_pool(tok, a.work, "train", 60000, kit_rng)
    kit = synthetic.Kit(pieces, {"train": pool_tr}, {"train": txt_tr})
    print(f"training sentence pool: {len(txt_tr)} sentences, {len(pool_tr[0])} tokens")

    docs = read_docs(os.path.join(a.work, "raw", "train.txt"))
    with open(os.path.join(a.work, "raw", "train.sources.txt")) as f:
        srcs = [ln.split("\t") for ln in f.read().splitlines()]
    assert len(srcs) == len(docs), (len(srcs), len(docs))

    skipped = collections.Counter()
    skip_examples = {}
    text_target = int(a.text_windows * WINDOW)
    synth_target = int(a.synth_per_text * text_target)
    lo, hi = (int(x) for x in a.synth_len.split(","))
    rng = np.random.default_rng(a.seed)
    out, kinds = [], []  # documents, and ("text", source, kind) / ("synth", task)
    text_tokens = synth_tokens = 0
    n_task = 0
    i = 0
    while text_tokens < text_target:
        if i >= len(docs):
            raise SystemExit("error: ran out of training documents")
        doc, (src, kind) = docs[i], srcs[i]
        i += 1
        reason = None
        if doc in heldout_set or any(h in doc for h in heldout_raw):
            reason = "equals or contains a held-out document"
        elif index.shared_lines(doc):
            reason = f"a line of >= {LONG_LINE} chars in heldout/calibration"
        else:
            hits = index.shared_substrings(doc)
            if hits:
                reason = f"shares {SUB}-char substrings with the evaluation files"
        if reason:
            skipped[(src, reason)] += 1
            skip_examples.setdefault((src, reason), doc[index.shared_substrings(doc)[0]:][:80]
                                     if "substrings" in reason else "")
            continue
        out.append(doc)
        kinds.append(("text", src, kind))
        text_tokens += n_tok(doc) + 1
        # synthetic examples as their own documents, keeping synth_tokens ~ synth_per_text * text_tokens
        while synth_tokens < a.synth_per_text * text_tokens and synth_tokens < synth_target:
            task = synthetic.TASKS[n_task % len(synthetic.TASKS)]
            length = int(rng.integers(lo, hi + 1))
            text, ids = synthetic_example(kit, rng, task, length, a.queries)
            assert tok.encode(text, add_special_tokens=False).ids == list(ids), "synthetic text does not re-tokenize"
            if index.shared_substrings(text) or index.shared_lines(text):
                skipped[("synthetic", "shares text with the evaluation files")] += 1
                continue
            n_task += 1
            out.append(text)
            kinds.append(("synth", task))
            synth_tokens += len(ids) + 1

    body = EOT.join(out)
    # Final check of the file as written.
    back = body.split(EOT)
    assert back == out, "a document contains the separator"
    n_shared = sum(len(index.shared_substrings(d)) for d in back)
    n_lines = sum(len(index.shared_lines(d)) for d in back)
    n_held = sum(d in heldout_set or any(h in d for h in heldout_raw) for d in back)
    assert n_shared == 0 and n_lines == 0 and n_held == 0, (n_shared, n_lines, n_held)
    path = os.path.join(a.out, "distill.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)

    total = len(tok.encode(body).ids)
    by_src = collections.Counter(k[1] for k in kinds if k[0] == "text")
    by_kind = collections.Counter(k[2] for k in kinds if k[0] == "text")
    by_task = collections.Counter(k[1] for k in kinds if k[0] == "synth")
    print(f"{path}: {len(out)} documents, {total} tokens ({total / WINDOW:.1f} windows of {WINDOW}), "
          f"{len(body.encode()) / 1e3:.0f} kB")
    print(f"  training documents: {sum(by_src.values())} ({text_tokens} tokens; "
          f"{', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_src.items())))
    print(f"  synthetic examples: {sum(by_task.values())} ({synth_tokens} tokens): "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_task.items())))
    print(f"  candidates left out (of {i} training documents read):")
    for (src, reason), n in sorted(skipped.items()):
        ex = skip_examples.get((src, reason))
        print(f"    {src:18s} {n:3d}  {reason}" + (f"  e.g. {ex!r}" if ex else ""))
    print(f"  check of the file: {n_held} held-out documents, {n_shared} shared {SUB}-char substrings, "
          f"{n_lines} shared lines of >= {LONG_LINE} chars")


if __name__ == "__main__":
    main()
