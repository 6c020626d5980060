"""Golden fixture for the embedded model: transformers' logits and top-k selections on held-out text.

Usage (runs on the GPU machine or any CPU; always float32 with TF32 off, eager attention):
    python3 scripts/make_model_golden.py --model models/dsa-mini --text data/heldout.txt \
        --out tests/data/model_golden

Writes expected.<PLAN>.safetensors for the all-F plan and one IndexCache plan:
  input_ids       int32 [T]           the first T tokens of the held-out text
  rows            int32 [R]           the query positions kept (every 32nd, and the last)
  logits          float32 [R, vocab]  transformers' logits at those positions
  topk.{l}        int32 [R, k]        the indices layer l attended to (S layers: the shared ones)
  index_scores.{l} float32 [R, T]     F layers' indexer scores at those rows (masked: -inf)
Only sampled rows are stored to keep the fixture small; the engine computes every row.

Tie-breaking: the indexer's ReLU makes exact ties common in a trained model (keys whose every head
scores <= 0 all get exactly 0), and torch.topk resolves equal scores in an unspecified,
device-dependent order. The DSA math does not fix that order; a different choice among tied tokens
changes the attention output and then everything downstream. So the indexer's top-k here is taken
with a STABLE descending sort (equal scores: lower token index first), the convention of our
engine, which makes the reference deterministic on CPU and GPU. Nothing else is changed.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM
import transformers


def run(model_dir, plan, ids, device):
    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.indexer_types = ["full" if c == "F" else "shared" for c in plan]
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager").to(device).eval()
    captured = {}

    def hook_indexer(layer):
        def fn(mod, args, kwargs, out):
            captured[f"sel.{layer}"] = out.detach()
        return fn

    # The indexer's scores: recompute from its inputs with the module's own code path by wrapping
    # topk on the score tensor.
    orig_topk = torch.Tensor.topk
    score_store = []

    def topk_spy(self, k, dim=-1, *a, **kw):
        if self.dim() == 3 and self.shape[-1] == len(ids) and self.shape[-2] == len(ids):
            score_store.append(self.detach().clone())
            values, indices = torch.sort(self, dim=dim, descending=True, stable=True)
            return torch.return_types.topk((values[..., :k], indices[..., :k]))
        return orig_topk(self, k, dim, *a, **kw)

    layers = model.model.layers
    for l, layer in enumerate(layers):
        if layer.self_attn.indexer is not None:
            layer.self_attn.indexer.register_forward_hook(hook_indexer(l), with_kwargs=True)
    torch.Tensor.topk = topk_spy
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids], device=device))
    finally:
        torch.Tensor.topk = orig_topk
    full_layers = [l for l, c in enumerate(plan) if c == "F"]
    assert len(score_store) == len(full_layers), (len(score_store), full_layers)
    scores = {l: s[0] for l, s in zip(full_layers, score_store)}
    sel, src = {}, None
    for l, c in enumerate(plan):
        if c == "F":
            src = l
        sel[l] = captured[f"sel.{src}"][0]
    return out.logits[0].float().cpu(), {l: v.cpu() for l, v in sel.items()}, {l: v.float().cpu() for l, v in scores.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/dsa-mini")
    ap.add_argument("--text", default="data/heldout.txt")
    ap.add_argument("--out", default="tests/data/model_golden")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--plans", default="FFFFFFFFFFFF,FSFSSFSSSSSS")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    text = open(args.text, encoding="utf-8").read()
    ids = tok.encode(text).ids[: args.tokens]
    T = len(ids)
    rows = sorted(set(list(range(0, T, 32)) + [T - 1]))
    os.makedirs(args.out, exist_ok=True)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device,
            "model": args.model, "text": args.text}
    for plan in args.plans.split(","):
        logits, sel, scores = run(args.model, plan, ids, device)
        r = torch.tensor(rows)
        tensors = {"input_ids": torch.tensor(ids, dtype=torch.int32), "rows": r.to(torch.int32),
                   "logits": logits[r].contiguous()}
        for l, v in sel.items():
            tensors[f"topk.{l}"] = v[r].to(torch.int32).contiguous()
        for l, v in scores.items():
            tensors[f"index_scores.{l}"] = v[r].contiguous()
        save_file(tensors, os.path.join(args.out, f"expected.{plan}.safetensors"),
                  metadata={**meta, "plan": plan})
        print(plan, "T", T, "rows", len(rows), "logits max", float(logits.abs().max()))
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("Made by `python3 scripts/make_model_golden.py` (see its docstring): " + json.dumps(meta) + "\n")


if __name__ == "__main__":
    main()
