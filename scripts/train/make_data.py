#!/usr/bin/env python3
"""Write the evaluation data kept in git (data/), from held-out documents that training never sees.

  /opt/ref/py scripts/train/make_data.py [--out data] [--corpus corpus] [--work DIR]

  data/heldout.txt        held-out documents joined by <|endoftext|> (about 24 windows of 4097 tokens)
  data/calibration.txt    other held-out documents, same format (about 8 windows), for calibration
  data/retrieval_{1k,2k,4k}.jsonl   synthetic long-range tasks (synthetic.py), 16 per task and length:
                          {"task", "context", "prompt", "answer", "prompt_tokens", "answer_ids"}
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402

EOT = "<|endoftext|>"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data")
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/indexcache-corpus"))
    ap.add_argument("--heldout-tokens", type=int, default=24 * 4097 + 2000)
    ap.add_argument("--calib-tokens", type=int, default=8 * 4097 + 2000)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.corpus, "tokenizer.json"))
    with open(os.path.join(a.work, "raw", "heldout.txt"), encoding="utf-8") as f:
        docs = [d for d in f.read().split(EOT) if d]
    os.makedirs(a.out, exist_ok=True)
    i = 0
    for name, target in (("heldout.txt", a.heldout_tokens), ("calibration.txt", a.calib_tokens)):
        chosen, n = [], 0
        while n < target and i < len(docs):
            chosen.append(docs[i])
            n += len(tok.encode(docs[i], add_special_tokens=False).ids) + 1
            i += 1
        text = EOT.join(chosen)
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{name}: {len(chosen)} documents, {len(tok.encode(text).ids)} tokens, {len(text) / 1e3:.0f} kB")
    synthetic.make_eval_sets(a.corpus, a.out, a.n)


if __name__ == "__main__":
    main()
