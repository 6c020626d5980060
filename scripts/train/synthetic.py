#!/usr/bin/env python3
"""Synthetic long-range tasks for the embedded default model.

Three tasks, each a prompt of a chosen length in tokens with a short answer that can only be found far
back in the prompt:
  passkey  a 5-digit pass key hidden once inside filler prose; the answer is the key.
  kv       many "The <adjective> <noun> has number N." records spread through the filler; the question
           names one object; the answer is its number.
  copy     a few 8-word notes spread through the filler; the question gives the first 3 words of one
           note and the answer is the rest of it, copied token for token.

Examples are assembled in token space from a "kit" (synth_kit.npz): the token ids of every template
piece, of the word lists, of every 1-3 digit group, and two pools of prose sentences (one from training
documents, one from held-out documents). Pieces are cut at pre-tokenizer boundaries, so the concatenated
ids equal the tokenizer's own encoding of the joined text; `build-kit` checks this on many examples.
The GPU machine therefore needs no tokenizer to make training examples.

CLI (developer machine, needs `tokenizers`):
  /opt/ref/py scripts/train/synthetic.py build-kit [--corpus corpus] [--work DIR]
  /opt/ref/py scripts/train/synthetic.py eval-sets --out data [--n 16]   (retrieval_{1k,2k,4k}.jsonl)
The evaluation function `retrieval_accuracy` is used by evaluate.py.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

EOT_ID = 0
TASKS = ("passkey", "kv", "copy")

ADJECTIVES = """red blue green yellow purple orange silver golden black white brown gray pink violet amber
crimson scarlet ivory copper bronze quiet loud gentle fierce brave shy clever calm happy sad lucky tiny
huge little big tall short long wide narrow deep shallow ancient modern young old fresh rapid slow swift
lazy busy bright dark shiny dusty rusty wooden stone iron glass paper cotton woolen frozen burning hidden
secret royal noble humble proud wild tame lonely friendly hungry sleepy thirsty curious eager honest
polite rough smooth soft hard sharp heavy light warm cold hot cool wet dry sweet bitter salty sour""".split()
NOUNS = """falcon tiger river mountain garden castle dragon engine window bridge forest island lantern
hammer violin pencil rocket harbor meadow candle mirror basket wagon kettle anchor compass feather helmet
ladder marble needle pillow saddle shovel thimble trumpet tunnel valley wizard zebra badger beaver camel
donkey eagle ferret goose heron jaguar koala lizard monkey otter parrot rabbit salmon turtle walrus
apple cherry lemon mango olive peach pepper walnut barrel bottle button carpet cottage desk drum fountain
glove jacket kitchen library lighthouse locket mill orchard palace piano ribbon scarf shield statue tower
wheel whistle canyon desert glacier lagoon prairie reef swamp volcano comet planet""".split()
# words of the copy notes: both lists
NOTE_WORDS = ADJECTIVES + NOUNS

HEAD = {
    "passkey": "There is an important pass key hidden inside a lot of irrelevant text. Find it and remember it. "
               "I will ask you for the pass key at the end.",
    "kv": "Below is a record of objects and their numbers, mixed with unrelated text. Remember the number of "
          "each object.",
    "copy": "Read the following text carefully. It contains a few notes that you will be asked to repeat "
            "exactly.",
}
FORBIDDEN = re.compile(r"pass key|[Nn]ote|number|Question|Answer|[Rr]epeat")


# ----------------------------------------------------------------------------------------------
# the kit: token ids of every piece the generators use
# ----------------------------------------------------------------------------------------------
def digit_groups(n):
    s = str(n)
    return [s[i:i + 3] for i in range(0, len(s), 3)]


def all_pieces():
    p = set(HEAD.values())
    p |= {" The pass key is", " ", ". Remember it.", " is the pass key.", " What is the pass key? The pass key is",
          " The", " has number", ".", " Question: what number does the", " have? Answer: the",
          " Note:", " Question: repeat the note that begins with", ". Answer: the note is"}
    p |= {" " + w for w in ADJECTIVES + NOUNS}
    for k in (1, 2, 3):
        p |= {str(i).zfill(k) for i in range(10 ** k)}
    return sorted(p)


class Kit:
    """Token ids of the template pieces plus two sentence pools (flat ids + offsets + doc ids)."""

    def __init__(self, pieces, pools, pool_texts=None):
        self.pieces = pieces                  # str -> np.int32 array
        self.pools = pools                    # name -> (ids, offsets, doc)
        self.pool_texts = pool_texts or {}    # name -> list of str (only where needed: eval pool)

    def enc(self, piece):
        return self.pieces[piece]

    @staticmethod
    def load(path):
        z = np.load(path, allow_pickle=False)
        names = json.loads(str(z["piece_names"]))
        flat, off = z["piece_ids"], z["piece_offsets"]
        pieces = {n: flat[off[i]:off[i + 1]].astype(np.int64) for i, n in enumerate(names)}
        pools, texts = {}, {}
        for name in ("train", "eval"):
            pools[name] = (z[f"pool_{name}_ids"].astype(np.int64), z[f"pool_{name}_offsets"], z[f"pool_{name}_doc"])
            if f"pool_{name}_text" in z:
                texts[name] = json.loads(str(z[f"pool_{name}_text"]))
        return Kit(pieces, pools, texts)

    def save(self, path):
        names = sorted(self.pieces)
        lens = [len(self.pieces[n]) for n in names]
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        arrays = dict(piece_names=np.array(json.dumps(names)),
                      piece_ids=np.concatenate([self.pieces[n] for n in names]).astype(np.int32),
                      piece_offsets=off)
        for name, (ids, offs, doc) in self.pools.items():
            arrays[f"pool_{name}_ids"] = ids.astype(np.uint16)
            arrays[f"pool_{name}_offsets"] = offs.astype(np.int64)
            arrays[f"pool_{name}_doc"] = doc.astype(np.int32)
        for name, texts in self.pool_texts.items():
            arrays[f"pool_{name}_text"] = np.array(json.dumps(texts))
        np.savez_compressed(path, **arrays)


# ----------------------------------------------------------------------------------------------
# generators. An example is a list of parts: ("p", piece string) or ("s", pool sentence index);
# `assemble` turns it into ids (and text, when the pool texts are known).
# ----------------------------------------------------------------------------------------------
def _number_parts(n):
    return [("p", " ")] + [("p", g) for g in digit_groups(n)]


def _parts_len(kit, parts, pool):
    ids, offs, _ = kit.pools[pool]
    n = 0
    for kind, v in parts:
        n += len(kit.enc(v)) if kind == "p" else int(offs[v + 1] - offs[v])
    return n


def _filler(kit, rng, pool, budget):
    """A run of consecutive pool sentences (wrapping to a new random start) totalling <= budget tokens."""
    ids, offs, doc = kit.pools[pool]
    n_sent = len(offs) - 1
    out, used = [], 0
    while True:
        start = int(rng.integers(n_sent))
        i = start
        added = False
        while i < n_sent and (i == start or doc[i] == doc[i - 1]):
            ln = int(offs[i + 1] - offs[i])
            if used + ln > budget:
                return out
            out.append(("s", i))
            used += ln
            added = True
            i += 1
            if rng.random() < 0.02:  # sometimes jump elsewhere
                break
        if not added:
            return out


def _place(filler, inserts, rng, depths=None):
    """Insert each part list of `inserts` into the filler (a list of parts) at sentence boundaries."""
    n = len(filler)
    if depths is None:
        depths = rng.random(len(inserts))
    pos = sorted(zip((int(round(d * n)) for d in depths), range(len(inserts))))
    out, last = [], 0
    for p, k in pos:
        out += filler[last:p] + inserts[k]
        last = p
    return out + filler[last:]


def _kv_records(rng, length):
    """kv task: 2-48 distinct (adjective, noun) objects with 4-5 digit numbers, and their record parts."""
    n_rec = max(2, min(48, length // 160 + int(rng.integers(-2, 3))))
    objs = []  # a list, not a set: the order must not depend on Python's string hashing
    while len(objs) < n_rec:
        o = (ADJECTIVES[int(rng.integers(len(ADJECTIVES)))], NOUNS[int(rng.integers(len(NOUNS)))])
        if o not in objs:
            objs.append(o)
    vals = [int(rng.integers(1000, 100000)) for _ in objs]
    inserts = [[("p", " The"), ("p", " " + a), ("p", " " + b), ("p", " has number")] + _number_parts(v) + [("p", ".")]
               for (a, b), v in zip(objs, vals)]
    return objs, vals, inserts


def _kv_question(a, b):
    return [("p", " Question: what number does the"), ("p", " " + a), ("p", " " + b),
            ("p", " have? Answer: the"), ("p", " " + a), ("p", " " + b), ("p", " has number")]


def _copy_notes(rng):
    """copy task: 2-4 notes of 8 words with distinct first words, and their note parts."""
    n_notes = int(rng.integers(2, 5))
    firsts = rng.choice(len(NOTE_WORDS), size=n_notes, replace=False)
    notes = []
    for f in firsts:
        words = [NOTE_WORDS[int(f)]] + [NOTE_WORDS[int(i)] for i in rng.integers(len(NOTE_WORDS), size=7)]
        notes.append(words)
    inserts = [[("p", " Note:")] + [("p", " " + w) for w in ws] + [("p", ".")] for ws in notes]
    return notes, inserts


def _copy_question_answer(ws):
    question = ([("p", " Question: repeat the note that begins with")] + [("p", " " + w) for w in ws[:3]]
                + [("p", ". Answer: the note is")] + [("p", " " + w) for w in ws[:3]])
    return question, [("p", " " + w) for w in ws[3:]] + [("p", ".")]


def make_parts(kit, rng, task, length, pool, depth=None):
    """Return (prompt_parts, answer_parts) whose total token count is <= length."""
    head = [("p", HEAD[task])]
    if task == "passkey":
        key = int(rng.integers(10000, 100000))
        num = _number_parts(key)
        needle = [("p", " The pass key is")] + num + [("p", ". Remember it.")] + num + [("p", " is the pass key.")]
        query = [("p", " What is the pass key? The pass key is")]
        answer = num
        inserts = [needle]
    elif task == "kv":
        objs, vals, inserts = _kv_records(rng, length)
        q = int(rng.integers(len(objs)))
        query = _kv_question(*objs[q])
        answer = _number_parts(vals[q])
    elif task == "copy":
        notes, inserts = _copy_notes(rng)
        q = int(rng.integers(len(notes)))
        query, answer = _copy_question_answer(notes[q])
    else:
        raise ValueError(task)
    fixed = _parts_len(kit, head + query + answer, pool) + sum(_parts_len(kit, x, pool) for x in inserts)
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"length {length} too short for task {task}")
    filler = _filler(kit, rng, pool, budget)
    depths = None
    if depth is not None:
        depths = [depth] if len(inserts) == 1 else None
    body = _place(filler, inserts, rng, depths)
    return head + body + query, answer


def assemble(kit, parts, pool, with_text=False):
    ids, offs, _ = kit.pools[pool]
    chunks, texts = [], []
    for kind, v in parts:
        if kind == "p":
            chunks.append(kit.enc(v))
            if with_text:
                texts.append(v)
        else:
            chunks.append(ids[offs[v]:offs[v + 1]])
            if with_text:
                texts.append(kit.pool_texts[pool][v])
    out = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return (out, "".join(texts)) if with_text else out


def make_example(kit, rng, task, length, pool="train", with_text=False, depth=None):
    prompt, answer = make_parts(kit, rng, task, length, pool, depth)
    if with_text:
        p_ids, p_txt = assemble(kit, prompt, pool, True)
        a_ids, a_txt = assemble(kit, answer, pool, True)
        return p_ids, a_ids, p_txt, a_txt
    return assemble(kit, prompt, pool), assemble(kit, answer, pool)


def training_sequence(kit, rng, length, min_len=384, task_p=None, max_queries=1):
    """One synthetic training example with a random task and length.

    Returns (ids, answer_mask): the ids of the prompt and its answer, and a bool mask that is true on
    the answer tokens. With max_queries > 1, kv and copy examples ask up to that many questions about
    different records / notes of the same text, each followed by its answer (more supervised answer
    tokens per long row); the first question and answer read exactly as in an evaluation example.
    task_p: probabilities of passkey, kv, copy (default uniform)."""
    task = TASKS[int(rng.choice(len(TASKS), p=task_p))] if task_p is not None else TASKS[int(rng.integers(len(TASKS)))]
    n = int(rng.integers(min_len, length + 1))
    if max_queries <= 1 or task == "passkey":
        p, a = make_example(kit, rng, task, n, "train")
        return np.concatenate([p, a]), np.concatenate([np.zeros(len(p), bool), np.ones(len(a), bool)])
    qa = _multi_query_parts(kit, rng, task, n, "train", max_queries)
    ids, mask = [], []
    for parts, is_answer in qa:
        x = assemble(kit, parts, "train")
        ids.append(x)
        mask.append(np.full(len(x), is_answer))
    return np.concatenate(ids), np.concatenate(mask)


def _multi_query_parts(kit, rng, task, length, pool, max_queries):
    """[(parts, is_answer)]: the body of a kv / copy example followed by several question-answer pairs,
    all within `length` tokens."""
    qa = []
    if task == "kv":
        objs, vals, inserts = _kv_records(rng, length)
        qs = rng.choice(len(objs), size=min(max_queries, len(objs)), replace=False)
        for i, q in enumerate(qs):
            lead = [("p", ".")] if i > 0 else []
            qa.append((lead + _kv_question(*objs[int(q)]), False))
            qa.append((_number_parts(vals[int(q)]), True))
    else:  # copy
        notes, inserts = _copy_notes(rng)
        qs = rng.choice(len(notes), size=min(max_queries, len(notes)), replace=False)
        for q in qs:
            question, answer = _copy_question_answer(notes[int(q)])
            qa.append((question, False))
            qa.append((answer, True))
    head = [("p", HEAD[task])]
    fixed = _parts_len(kit, head, pool) + sum(_parts_len(kit, x, pool) for x in inserts) \
        + sum(_parts_len(kit, x, pool) for x, _ in qa)
    while fixed > length and len(qa) > 2:  # too short for all questions: drop the last ones
        fixed -= _parts_len(kit, qa[-1][0], pool) + _parts_len(kit, qa[-2][0], pool)
        qa = qa[:-2]
    budget = length - fixed
    if budget < 0:
        raise ValueError(f"length {length} too short for task {task}")
    body = _place(_filler(kit, rng, pool, budget), inserts, rng)
    return [(head + body, False)] + qa


# ----------------------------------------------------------------------------------------------
# evaluation: greedy exact match of the answer tokens
# ----------------------------------------------------------------------------------------------
def retrieval_accuracy(logits_fn, examples):
    """examples: list of dicts with prompt_ids, answer_ids (lists of int).
    logits_fn(ids: list[int]) -> array [len(ids), vocab] of next-token logits.
    Greedy decoding reproduces the answer exactly iff, with the answer fed back (teacher forcing), the
    argmax at every answer position is the answer token: one forward pass per example decides it.
    Returns (accuracy, per-example correctness list)."""
    ok = []
    for ex in examples:
        p, a = list(ex["prompt_ids"]), list(ex["answer_ids"])
        logits = logits_fn(p + a[:-1])
        pred = np.asarray(logits[len(p) - 1:len(p) - 1 + len(a)]).argmax(-1)
        ok.append(bool((pred == np.asarray(a)).all()))
    return (sum(ok) / max(1, len(ok))), ok


# ----------------------------------------------------------------------------------------------
# kit building (developer machine)
# ----------------------------------------------------------------------------------------------
FILLER_SOURCES = {"austen", "jargon-file", "python-docs", "linux-docs", "perl-docs", "debian-docs",
                  "devils-dictionary"}
_SENT_OK = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-]*[A-Za-z0-9)][.!?]$")


def extract_sentences(doc):
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(ln.startswith(("  ", "\t")) for ln in lines):  # code / verbatim blocks
            continue
        text = " ".join(ln.strip() for ln in lines)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            s = s.strip()
            if 40 <= len(s) <= 240 and len(s.split()) >= 7 and _SENT_OK.match(s) and not FORBIDDEN.search(s) \
                    and "  " not in s:
                out.append(s)
    return out


def _sentence_pool(tok, work, split, max_sents, rng):
    with open(os.path.join(work, "raw", split + ".txt"), encoding="utf-8") as f:
        docs = f.read().split("<|endoftext|>")
    with open(os.path.join(work, "raw", split + ".sources.txt")) as f:
        srcs = [ln.split("\t")[0] for ln in f.read().splitlines()]
    assert len(srcs) == len(docs), (len(srcs), len(docs))
    sents, doc_of = [], []
    order = rng.permutation(len(docs))
    for di in order:
        if srcs[di] not in FILLER_SOURCES:
            continue
        for s in extract_sentences(docs[di]):
            sents.append(" " + s)
            doc_of.append(int(di))
        if len(sents) >= max_sents:
            break
    # keep sentences whose ids do not depend on their neighbours
    encs = tok.encode_batch(sents, add_special_tokens=False)
    ctx = tok.encode_batch([". Abc." + s + " Xyz" for s in sents], add_special_tokens=False)
    pre = tok.encode(". Abc.", add_special_tokens=False).ids
    post = tok.encode(" Xyz", add_special_tokens=False).ids
    keep_ids, keep_txt, keep_doc = [], [], []
    for s, e, c, d in zip(sents, encs, ctx, doc_of):
        if c.ids == pre + e.ids + post:
            keep_ids.append(np.asarray(e.ids, np.int64))
            keep_txt.append(s)
            keep_doc.append(d)
    offs = np.concatenate([[0], np.cumsum([len(x) for x in keep_ids])]).astype(np.int64)
    return (np.concatenate(keep_ids), offs, np.asarray(keep_doc, np.int64)), keep_txt


def build_kit(corpus, work, seed=7, check=200):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(corpus, "tokenizer.json"))
    rng = np.random.default_rng(seed)
    pieces = {p: np.asarray(tok.encode(p, add_special_tokens=False).ids, np.int64) for p in all_pieces()}
    pool_tr, txt_tr = _sentence_pool(tok, work, "train", 60000, rng)
    pool_ev, txt_ev = _sentence_pool(tok, work, "heldout", 20000, rng)
    print(f"sentence pools: train {len(txt_tr)} sentences / {len(pool_tr[0])} tokens, "
          f"eval {len(txt_ev)} / {len(pool_ev[0])}", flush=True)
    kit = Kit(pieces, {"train": pool_tr, "eval": pool_ev}, {"train": txt_tr, "eval": txt_ev})
    # check: assembled ids == the tokenizer's ids of the assembled text, for every task and both pools
    bad = 0
    for pool in ("train", "eval"):
        for task in TASKS:
            for _ in range(check):
                n = int(rng.integers(300, 4097))
                p_ids, a_ids, p_txt, a_txt = make_example(kit, rng, task, n, pool, with_text=True)
                full = tok.encode(p_txt + a_txt, add_special_tokens=False).ids
                if full != list(p_ids) + list(a_ids) or tok.encode(p_txt, add_special_tokens=False).ids != list(p_ids) \
                        or len(full) > n:
                    bad += 1
    print(f"kit check: {bad} mismatches in {2 * len(TASKS) * check} examples", flush=True)
    if bad:
        raise SystemExit("error: synthetic pieces do not tokenize independently")
    kit.pool_texts = {"eval": txt_ev}  # the train pool's text is not needed on the GPU machine
    kit.save(os.path.join(corpus, "synth_kit.npz"))
    return kit


def make_eval_sets(corpus, out, n_per_task=16, lengths=(1024, 2048, 4096), seed=2024):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(corpus, "tokenizer.json"))
    kit = Kit.load(os.path.join(corpus, "synth_kit.npz"))
    os.makedirs(out, exist_ok=True)
    for L in lengths:
        rng = np.random.default_rng(seed + L)
        rows = []
        for task in TASKS:
            for i in range(n_per_task):
                depth = (i + 0.5) / n_per_task  # needle depths spread evenly (passkey)
                p_ids, a_ids, p_txt, a_txt = make_example(kit, rng, task, L - 8, "eval", with_text=True,
                                                          depth=depth)
                assert tok.encode(p_txt, add_special_tokens=False).ids == list(p_ids)
                assert tok.encode(p_txt + a_txt, add_special_tokens=False).ids == list(p_ids) + list(a_ids)
                rows.append({"task": task, "context": L, "prompt": p_txt, "answer": a_txt,
                             "prompt_tokens": int(len(p_ids)), "answer_ids": [int(x) for x in a_ids]})
        name = os.path.join(out, f"retrieval_{L // 1024}k.jsonl")
        with open(name, "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} examples, {os.path.getsize(name) / 1e3:.0f} kB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-kit")
    b.add_argument("--corpus", default="corpus")
    b.add_argument("--work", default=os.path.expanduser("~/.cache/indexcache-corpus"))
    e = sub.add_parser("eval-sets")
    e.add_argument("--corpus", default="corpus")
    e.add_argument("--out", default="data")
    e.add_argument("--n", type=int, default=16, help="examples per task and length")
    e.add_argument("--lengths", default="1024,2048,4096")
    args = ap.parse_args()
    if args.cmd == "build-kit":
        build_kit(args.corpus, args.work)
    else:
        make_eval_sets(args.corpus, args.out, args.n, tuple(int(x) for x in args.lengths.split(",")))


if __name__ == "__main__":
    main()
