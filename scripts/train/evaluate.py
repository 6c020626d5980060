#!/usr/bin/env python3
"""Evaluate an exported glm_moe_dsa checkpoint with the training implementation (fp32, no autocast).

  python3 scripts/train/evaluate.py --model DIR [--data data] [--out DIR] [--ctx 4096] [--greedy]

Reports (OUT/eval.json, OUT/eval.md, OUT/loss_curve.svg and .png when matplotlib is there):
  - held-out loss at --ctx on data/heldout.txt (non-overlapping windows): dense attention, sparse DSA
    with every layer F, and the uniform IndexCache plans 1/2 (F at layers 0,2,4,..) and 1/4 (0,4,8,..),
    where each S layer reuses the top-k of the nearest preceding F layer; also over positions >= k only
  - retrieval accuracy (greedy exact match of the answer tokens) on data/retrieval_{1k,2k,4k}.jsonl for
    dense, sparse all-F, 1/2, 1/4, per task
  - cross-layer top-k overlap |T_i & T_j| / k, averaged over queries with more than k candidates
    (all layers F), on held-out windows: the full matrix and the adjacent-layer values
  - with --greedy: the training-free greedy F->S search on data/calibration.txt (the paper's method)
  - the training curves from WORK/log_*.json, when --work is given
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402
from export import load_checkpoint  # noqa: E402


def plan_str(plan):
    return "".join("F" if f else "S" for f in plan)


def uniform_plan(L, freq):
    return [i % freq == 0 for i in range(L)]


class Evaluator:
    def __init__(self, model, device, bs=4):
        self.model, self.dev, self.bs = model, device, bs

    @torch.no_grad()
    def logits(self, ids, mode, plan=None, st=None):
        return self.model(ids.to(self.dev), mode=mode, plan=plan, st=st).float()

    @torch.no_grad()
    def loss(self, windows, mode, plan=None, skip=0):
        """mean next-token loss over all positions, and over positions >= skip (0: same)"""
        tot = tot_tail = 0.0
        n = n_tail = 0
        for i in range(0, len(windows), self.bs):
            w = windows[i:i + self.bs].to(self.dev)
            lg = self.logits(w[:, :-1], mode, plan)
            ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), w[:, 1:].reshape(-1), reduction="none").view(w.shape[0], -1)
            tot += float(ce.sum())
            n += ce.numel()
            if skip:
                tot_tail += float(ce[:, skip:].sum())
                n_tail += ce[:, skip:].numel()
        return tot / n, (tot_tail / n_tail if n_tail else None)

    @torch.no_grad()
    def retrieval(self, examples, mode, plan=None, pad_id=1):
        """greedy exact match, teacher-forced (see synthetic.retrieval_accuracy), batched with right padding"""
        ok, tok_acc = [], []
        for i in range(0, len(examples), self.bs):
            chunk = examples[i:i + self.bs]
            seqs = [list(e["prompt_ids"]) + list(e["answer_ids"])[:-1] for e in chunk]
            T = max(len(s) for s in seqs)
            x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, :len(s)] = torch.tensor(s)
            lg = self.logits(x, mode, plan)
            for r, e in enumerate(chunk):
                p, a = len(e["prompt_ids"]), e["answer_ids"]
                pred = lg[r, p - 1:p - 1 + len(a)].argmax(-1).cpu().tolist()
                ok.append(pred == list(a))
                tok_acc.append(sum(x == y for x, y in zip(pred, a)) / len(a))
        self.last_token_accuracy = tok_acc
        return ok

    @torch.no_grad()
    def overlap(self, windows, k):
        """matrix [L, L] of mean |T_i & T_j| / k over queries t with t+1 > k (all layers F)"""
        L = self.model.cfg.num_hidden_layers
        acc = torch.zeros(L, L, dtype=torch.float64)
        cnt = 0
        for i in range(0, len(windows), self.bs):
            w = windows[i:i + self.bs, :-1].to(self.dev)
            st = {"collect_topk": []}
            self.logits(w, "sparse", None, st)
            B, T = w.shape
            if T <= k:
                return None
            causal = torch.ones(T, T, dtype=torch.bool, device=self.dev).tril()
            sets = []
            for idx in st["collect_topk"]:
                s = torch.zeros(B, T, T, dtype=torch.bool, device=self.dev).scatter_(-1, idx, True) & causal
                sets.append(s[:, k:])  # queries t >= k have t+1 > k candidates
            for a in range(L):
                for b in range(a, L):
                    v = (sets[a] & sets[b]).sum(-1).double().div(k).sum().cpu()
                    acc[a, b] += v
                    if a != b:
                        acc[b, a] += v
            cnt += B * (T - k)
        return (acc / cnt).tolist()

    def greedy(self, windows, L, budget_s=240):
        """Training-free greedy search: layer 0 stays F; at each step flip the F layer whose flip to S gives
        the lowest calibration loss. Returns the order of flips and the loss after each."""
        plan = [True] * L
        base, _ = self.loss(windows, "sparse", plan)
        steps = [{"n_shared": 0, "plan": plan_str(plan), "loss": base}]
        t0 = time.time()
        while sum(plan) > 1:
            best = None
            for j in range(1, L):
                if not plan[j]:
                    continue
                trial = list(plan)
                trial[j] = False
                l, _ = self.loss(windows, "sparse", trial)
                if best is None or l < best[0]:
                    best = (l, j)
            plan[best[1]] = False
            steps.append({"n_shared": L - sum(plan), "flipped": best[1], "plan": plan_str(plan), "loss": best[0]})
            if time.time() - t0 > budget_s:
                steps.append({"stopped": "time budget"})
                break
        return steps


def windows_from_text(tok, path, T, max_windows):
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    n = min(max_windows, len(ids) // (T + 1))
    return torch.tensor(ids[:n * (T + 1)], dtype=torch.long).view(n, T + 1), len(ids)


def load_retrieval(tok, path, ctx):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            p = tok.encode(r["prompt"], add_special_tokens=False).ids
            if len(p) != r["prompt_tokens"]:
                raise RuntimeError(f"{path}: prompt tokenizes to {len(p)} tokens, file says {r['prompt_tokens']}")
            r["prompt_ids"] = p
            if len(p) + len(r["answer_ids"]) <= ctx:
                rows.append(r)
    return rows


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
def curves_from_logs(work):
    """LM-loss series (pre-training, sparse stage) and KL series (warm-up, sparse stage) on one step axis."""
    loss, kl, evals = [], [], []
    s_off = 0
    for stage in ("pretrain", "warmup", "sparse"):
        p = os.path.join(work, f"log_{stage}.json")
        if not os.path.exists(p):
            continue
        d = json.load(open(p))
        c = d.get("curve", [])
        if stage != "warmup":
            loss.append((stage, [s_off + r["step"] for r in c], [r["loss"] for r in c]))
        if stage != "pretrain":
            kl.append((stage, [s_off + r["step"] for r in c], [r["kl_mean"] for r in c]))
        for e in d.get("evals", []):
            evals.append((s_off + e["step"], e.get("heldout_dense"), e.get("heldout_sparse")))
        s_off += d.get("steps", c[-1]["step"] if c else 0)
    return {"loss": loss, "kl": kl, "evals": evals, "steps": s_off}


COLORS = {"pretrain": "#1f77b4", "warmup": "#2ca02c", "sparse": "#d62728"}
LABELS = {("loss", "pretrain"): "pre-training loss (dense attention)", ("loss", "sparse"): "sparse-stage loss",
          ("kl", "warmup"): "warm-up KL (dense, indexers only)", ("kl", "sparse"): "sparse-stage KL (selected set)"}


def _svg_panel(out, series, marks, x0, y0, w, h, xmax, ylabel, logy=False, legend_left=False):
    ys = [y for _, _, _, yy in series for y in yy if y is not None and (y > 0 or not logy)]
    ys += [v for m in marks for v in m[1:] if v is not None]
    if not ys:
        return
    f = (lambda v: math.log10(max(v, 1e-12))) if logy else (lambda v: v)
    lo, hi = f(min(ys)), f(max(ys))
    if not logy and len(ys) > 4:  # cut the first steps' very high loss
        hi = min(hi, lo + 4 * (float(np.percentile(ys, 90)) - lo) + 1e-6)
    if hi <= lo:
        hi = lo + 1

    def X(x):
        return x0 + w * x / max(1, xmax)

    def Y(v):
        v = min(max(f(v) if v > 0 or not logy else lo, lo), hi)
        return y0 + h - h * (v - lo) / (hi - lo)

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="black"/>')
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        lab = f"{10 ** v:.2g}" if logy else f"{v:.2f}"
        yy = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + w}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 - 4}" y="{yy + 4:.1f}" text-anchor="end">{lab}</text>')
        xv = xmax * i / 4
        out.append(f'<text x="{X(xv):.1f}" y="{y0 + h + 14}" text-anchor="middle">{int(xv)}</text>')
    out.append(f'<text x="{x0 - 58}" y="{y0 + h / 2}" transform="rotate(-90 {x0 - 58} {y0 + h / 2})" '
               f'text-anchor="middle">{ylabel}</text>')
    ly = y0 + 14
    lx = x0 + 240 if legend_left else x0 + w  # legend items are placed at lx - 230 .. lx
    for kind, stage, xs, yy in series:
        c = COLORS[stage]
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, yy) if y is not None)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.3" points="{pts}"/>')
        out.append(f'<line x1="{lx - 230}" y1="{ly}" x2="{lx - 210}" y2="{ly}" stroke="{c}" stroke-width="2"/>'
                   f'<text x="{lx - 205}" y="{ly + 4}">{LABELS[(kind, stage)]}</text>')
        ly += 15
    if marks:
        for st, hd, hs in marks:
            if hd is not None:
                out.append(f'<circle cx="{X(st):.1f}" cy="{Y(hd):.1f}" r="3.5" fill="none" stroke="black"/>')
            if hs is not None:
                out.append(f'<rect x="{X(st) - 3:.1f}" y="{Y(hs) - 3:.1f}" width="6" height="6" fill="none" '
                           f'stroke="#d62728"/>')
        out.append(f'<circle cx="{x0 + w - 220}" cy="{ly}" r="3.5" fill="none" stroke="black"/>'
                   f'<text x="{x0 + w - 205}" y="{ly + 4}">held-out loss, dense attention</text>')
        ly += 15
        out.append(f'<rect x="{x0 + w - 223}" y="{ly - 3}" width="6" height="6" fill="none" stroke="#d62728"/>'
                   f'<text x="{x0 + w - 205}" y="{ly + 4}">held-out loss, sparse (all F)</text>')


def svg_plot(cur, path, title):
    """Hand-written SVG (no plotting library needed): LM loss on top, indexer KL (log scale) below."""
    if not cur["loss"] and not cur["kl"]:
        return False
    W, H = 800, 560
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    _svg_panel(out, [("loss", s, x, y) for s, x, y in cur["loss"]], cur["evals"], 85, 35, W - 115, 250,
               cur["steps"], "loss (nats)")
    _svg_panel(out, [("kl", s, x, y) for s, x, y in cur["kl"]], [], 85, 320, W - 115, 190, cur["steps"],
               "KL (nats, log)", logy=True, legend_left=True)
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">optimizer step (all stages)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))
    return True


def png_plot(cur, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not cur["loss"] and not cur["kl"]:
        return False
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ys = []
    for s, x, y in cur["loss"]:
        a1.plot(x, y, color=COLORS[s], lw=1.1, label=LABELS[("loss", s)])
        ys += [v for v in y if v is not None]
    ev = cur["evals"]
    if ev:
        a1.plot([e[0] for e in ev if e[1] is not None], [e[1] for e in ev if e[1] is not None], "ko", mfc="none",
                ms=5, label="held-out loss, dense attention")
        if any(e[2] is not None for e in ev):
            a1.plot([e[0] for e in ev if e[2] is not None], [e[2] for e in ev if e[2] is not None], "s",
                    color="tab:red", mfc="none", ms=5, label="held-out loss, sparse (all F)")
    if len(ys) > 4:
        lo = min(ys)
        a1.set_ylim(lo - 0.1, min(max(ys), lo + 4 * (float(np.percentile(ys, 90)) - lo)) + 0.1)
    a1.set_ylabel("loss (nats)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8, loc="upper right")
    for s, x, y in cur["kl"]:
        a2.semilogy(x, [max(v, 1e-12) for v in y], color=COLORS[s], lw=1.1, label=LABELS[("kl", s)])
    a2.set_ylabel("indexer KL (nats)")
    a2.set_xlabel("optimizer step (all stages)")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8, loc="upper left")
    a1.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
def markdown(r):
    L = []
    hl = r.get("heldout")
    if hl:
        L.append(f"Held-out loss at context {hl['context']} ({hl['windows']} windows, {hl['tokens']} tokens); "
                 f"'tail' = positions >= index_topk ({r['index_topk']}), where selection is really sparse.\n")
        L.append("| attention | plan | loss | tail loss | vs dense |")
        L.append("|---|---|---|---|---|")
        for name, v in hl["results"].items():
            L.append(f"| {name} | {v['plan']} | {v['loss']:.4f} | {v['tail_loss']:.4f} | "
                     f"{100 * v['rel_to_dense']:+.2f} % |")
        L.append("")
    rt = r.get("retrieval")
    if rt:
        L.append("Retrieval accuracy (greedy exact match of the answer tokens):\n")
        modes = list(next(iter(rt.values()))["modes"].keys())
        L.append("| set | n | " + " | ".join(modes) + " |")
        L.append("|---|---|" + "---|" * len(modes))
        for name, v in rt.items():
            L.append(f"| {name} | {v['n']} | " + " | ".join(f"{100 * v['modes'][m]['all']:.1f} %" for m in modes) + " |")
            for task in synthetic.TASKS:
                if task in v["modes"][modes[0]]:
                    L.append(f"| {name} {task} | | " + " | ".join(f"{100 * v['modes'][m][task]:.1f} %" for m in modes)
                             + " |")
        L.append("")
    ov = r.get("overlap")
    if ov:
        L.append("Adjacent-layer top-k overlap (all layers F), mean |T_i ∩ T_i+1| / k over queries with more than "
                 "k candidates:\n")
        L.append("| layers | " + " | ".join(f"{i}-{i + 1}" for i in range(len(ov["adjacent"]))) + " |")
        L.append("|---|" + "---|" * len(ov["adjacent"]))
        L.append("| overlap | " + " | ".join(f"{v:.3f}" for v in ov["adjacent"]) + " |")
        L.append("")
    g = r.get("greedy")
    if g:
        L.append("Greedy F->S search on the calibration set (loss after each flip):\n")
        L.append("| shared layers | plan | loss |")
        L.append("|---|---|---|")
        for s in g:
            if "plan" in s:
                L.append(f"| {s['n_shared']} | {s['plan']} | {s['loss']:.4f} |")
        L.append("")
    c = r.get("criteria")
    if c:
        L.append("Criteria: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in c.items()))
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "data"))
    ap.add_argument("--corpus", default=os.path.join(HERE, "..", "..", "corpus"))
    ap.add_argument("--out", default="eval_out")
    ap.add_argument("--work", default=None, help="training work dir (for the curves)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--heldout-windows", type=int, default=64)
    ap.add_argument("--overlap-windows", type=int, default=4)
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="CPU test: retrieval made on the fly at --ctx")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, cfg = load_checkpoint(a.model, dev)
    L, k = cfg.num_hidden_layers, cfg.index_topk
    ev = Evaluator(model, dev, a.bs)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    plans = {"dense": ("dense", None), "sparse_F": ("sparse", None),
             "sparse_1/2": ("sparse", uniform_plan(L, 2)), "sparse_1/4": ("sparse", uniform_plan(L, 4))}
    res = {"model": os.path.abspath(a.model), "context": a.ctx, "index_topk": k, "layers": L,
           "plans": {n: (plan_str(p) if p else ("dense" if m == "dense" else "F" * L)) for n, (m, p) in plans.items()}}

    # held-out loss
    win, ntok = windows_from_text(tok, os.path.join(a.data, "heldout.txt"), a.ctx, a.heldout_windows)
    hl = {"context": a.ctx, "windows": int(win.shape[0]), "tokens": int(win.shape[0] * a.ctx), "results": {}}
    for name, (mode, plan) in plans.items():
        l, lt = ev.loss(win, mode, plan, skip=k if a.ctx > k else 0)
        hl["results"][name] = {"plan": res["plans"][name], "loss": l, "tail_loss": lt if lt is not None else l}
    dl = hl["results"]["dense"]["loss"]
    dt = hl["results"]["dense"]["tail_loss"]
    for v in hl["results"].values():
        v["rel_to_dense"] = v["loss"] / dl - 1
        v["tail_rel_to_dense"] = v["tail_loss"] / dt - 1
    res["heldout"] = hl
    print(f"held-out: " + ", ".join(f"{n} {v['loss']:.4f} ({100 * v['rel_to_dense']:+.2f}%)"
                                    for n, v in hl["results"].items()), flush=True)

    # retrieval
    sets = {}
    if a.tiny:
        kit = synthetic.Kit.load(os.path.join(a.corpus, "synth_kit.npz"))
        rng = np.random.default_rng(5)
        exs = []
        for task in synthetic.TASKS:
            for _ in range(4):
                try:
                    p, ans = synthetic.make_example(kit, rng, task, a.ctx - 8, "eval")
                except ValueError:
                    continue
                exs.append({"task": task, "prompt_ids": p.tolist(), "answer_ids": ans.tolist()})
        sets[f"generated_{a.ctx}"] = exs
    else:
        for n in ("1k", "2k", "4k"):
            p = os.path.join(a.data, f"retrieval_{n}.jsonl")
            if os.path.exists(p):
                rows = load_retrieval(tok, p, a.ctx)
                if rows:
                    sets[n] = rows
    rt = {}
    for name, exs in sets.items():
        rt[name] = {"n": len(exs), "modes": {}}
        for mname, (mode, plan) in plans.items():
            ok = ev.retrieval(exs, mode, plan, pad_id=cfg.pad_token_id)
            per = {}
            for task in synthetic.TASKS:
                sel = [o for o, e in zip(ok, exs) if e["task"] == task]
                if sel:
                    per[task] = sum(sel) / len(sel)
            rt[name]["modes"][mname] = {"all": sum(ok) / max(1, len(ok)), **per,
                                        "answer_token_accuracy": float(np.mean(ev.last_token_accuracy))}
        print(f"retrieval {name}: " + ", ".join(f"{m} {100 * v['all']:.1f}%" for m, v in rt[name]["modes"].items()),
              flush=True)
    res["retrieval"] = rt

    # overlap
    if a.ctx > k:
        ov = ev.overlap(win[:a.overlap_windows], k)
        if ov is not None:
            res["overlap"] = {"matrix": ov, "adjacent": [ov[i][i + 1] for i in range(L - 1)],
                              "windows": int(min(a.overlap_windows, win.shape[0]))}
            print("adjacent overlap: " + " ".join(f"{v:.3f}" for v in res["overlap"]["adjacent"]), flush=True)

    # greedy search
    if a.greedy:
        cw, _ = windows_from_text(tok, os.path.join(a.data, "calibration.txt"), a.ctx, a.calib_windows)
        if len(cw):
            res["greedy"] = ev.greedy(cw, L)
            print("greedy: " + " ".join(f"{s.get('plan')}:{s.get('loss', 0):.4f}" for s in res["greedy"]), flush=True)

    # criteria of the issue
    crit = {}
    if "sparse_F" in hl["results"]:
        crit["sparse_within_2pct_of_dense"] = abs(hl["results"]["sparse_F"]["rel_to_dense"]) <= 0.02
    key = {4096: "4k", 2048: "2k", 1024: "1k"}.get(a.ctx)
    if key in rt:
        crit["retrieval_at_training_context_ge_90pct"] = rt[key]["modes"]["sparse_F"]["all"] >= 0.9
    res["criteria"] = crit

    # curves
    if a.work:
        cur = curves_from_logs(a.work)
        title = "glm_moe_dsa mini: dense pre-training, indexer warm-up, sparse stage"
        res["curves_svg"] = svg_plot(cur, os.path.join(a.out, "loss_curve.svg"), title)
        res["curves_png"] = png_plot(cur, os.path.join(a.out, "loss_curve.png"), title)
    res["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "eval.md"), "w") as f:
        f.write(markdown(res) + "\n")
    print(markdown(res), flush=True)
    return res


if __name__ == "__main__":
    main()
