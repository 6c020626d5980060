#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer on the corpus and pre-tokenize it.

Runs on the developer machine (CPU), with the Hugging Face `tokenizers` package:
    /opt/ref/py scripts/train/train_tokenizer.py [--corpus corpus] [--work DIR] [--vocab 8192]

Reads  WORK/raw/{train,heldout}.txt (documents joined by <|endoftext|>, see build_corpus.py).
Writes corpus/tokenizer.json, corpus/tokenizer_config.json,
       corpus/train.bin.xz, corpus/heldout.bin  (uint16 token ids, <|endoftext|> after each document;
       the training array xz-compressed),
       corpus/tokenizer_stats.json.

The pre-tokenizer is the one the GLM / DeepSeek-V3 family uses: a regex Split (letters with one leading
non-letter, digits in groups of 1-3, punctuation runs, newlines, spaces) followed by ByteLevel without its
own regex. Special tokens: <|endoftext|> = 0 (document separator, eos), <|pad|> = 1.
"""
import argparse
import json
import lzma
import os
import sys
import time

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>"]
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in f.read().split(EOT) if d]


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def encode_docs(tok, docs, eot_id, batch=256):
    out = []
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(docs[i:i + batch], add_special_tokens=False):
            out.append(np.asarray(enc.ids, dtype=np.uint16))
            out.append(np.asarray([eot_id], dtype=np.uint16))
    return np.concatenate(out) if out else np.zeros(0, np.uint16)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/indexcache-corpus"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--min-frequency", type=int, default=2)
    args = ap.parse_args()
    raw = os.path.join(args.work, "raw")
    out = args.corpus
    os.makedirs(out, exist_ok=True)
    if not 4096 <= args.vocab <= 16384:
        sys.exit("error: --vocab must be in 4096..16384")

    t0 = time.time()
    train = read_docs(os.path.join(raw, "train.txt"))
    held = read_docs(os.path.join(raw, "heldout.txt"))
    print(f"{len(train)} train docs, {len(held)} held-out docs", flush=True)

    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, min_frequency=args.min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train, trainer=trainer, length=len(train))
    assert tok.token_to_id(EOT) == 0 and tok.token_to_id("<|pad|>") == 1
    assert tok.get_vocab_size() == args.vocab, tok.get_vocab_size()
    tok.save(os.path.join(out, "tokenizer.json"))
    print(f"tokenizer trained in {time.time() - t0:.0f} s, vocab {tok.get_vocab_size()}", flush=True)

    # transformers reads this next to tokenizer.json (AutoTokenizer -> PreTrainedTokenizerFast)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": EOT,
                   "pad_token": "<|pad|>", "unk_token": None, "add_bos_token": False, "add_eos_token": False,
                   "clean_up_tokenization_spaces": False, "model_max_length": 4096}, f, indent=1)

    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))  # what the engine and transformers read
    t1 = time.time()
    stats = {"vocab_size": tok.get_vocab_size(), "specials": {s: tok.token_to_id(s) for s in SPECIALS},
             "split_pattern": SPLIT_PATTERN}
    for name, docs in (("train", train), ("heldout", held)):
        ids = encode_docs(tok, docs, 0)
        if name == "train":  # xz keeps the folder that travels small (33 MB -> 12 MB); train.py unpacks it
            with lzma.open(os.path.join(out, "train.bin.xz"), "wb", preset=6) as f:
                f.write(ids.tobytes())
            if os.path.exists(os.path.join(out, "train.bin")):
                os.remove(os.path.join(out, "train.bin"))
        else:
            ids.tofile(os.path.join(out, f"{name}.bin"))
        chars = sum(len(d) for d in docs)
        stats[name] = {"docs": len(docs), "chars": chars, "tokens": int(ids.size),
                       "chars_per_token": round(chars / max(1, ids.size), 3)}
        print(f"{name}: {ids.size} tokens, {chars / max(1, ids.size):.2f} chars/token", flush=True)
    # round trip check on a few documents
    for d in held[:20]:
        assert tok.decode(tok.encode(d).ids) == d, "tokenizer does not round-trip"
    stats["encode_seconds"] = round(time.time() - t1, 1)
    with open(os.path.join(out, "tokenizer_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)


if __name__ == "__main__":
    main()
