#!/usr/bin/env python3
"""Train the embedded default DSA model: dense pre-training, indexer warm-up, sparse stage, export.

  python3 scripts/train/train.py --stage all --work /tmp/work [--minutes-pretrain 10.5 ...]
  python3 scripts/train/train.py --stage all --tiny --work /tmp/tiny   (CPU smoke test, ~2 minutes)

Stages (each resumable: it skips itself when its checkpoint is complete, and pre-training resumes from
its last periodic checkpoint):
  pretrain  dense causal attention, LM loss on a mix of corpus windows and synthetic long-range tasks
  warmup    DeepSeek-V3.2 dense warm-up: model frozen, only the indexers learn, by
            KL(p_t || softmax(I_t)), p_t = head-summed attention L1-normalised over the causal keys
  sparse    top-k selection on: LM loss through sparse attention (all parameters but the indexers),
            indexers by KL over the selected set; the indexer's input is detached from the LM loss
  export    bf16 Hugging Face checkpoint in WORK/export/NAME, then verify() against transformers
  eval      evaluate.py on the exported model (dense vs sparse loss, IndexCache plans, retrieval, overlap)
Stopping is by wall clock (--minutes-*), so a stage never overruns; the learning-rate schedules run on
the fraction of the stage's time used. Logs: WORK/log_<stage>.json (curves), WORK/status.json.
"""
import argparse
import json
import math
import os
import queue
import sys
import threading
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402
from model import GlmMoeDsaLM, ModelConfig, parameter_counts, tiny_config  # noqa: E402

STAGES = ("pretrain", "warmup", "sparse", "export", "eval")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
class Batches:
    """Background producer of [B, T+1] int64 token batches: random corpus windows, and a fraction of
    rows that start with a synthetic long-range example (then <|endoftext|> and corpus text)."""

    def __init__(self, corpus, B, T, synth_frac, seed, kit=None, prefetch=6, work=None, task_p=None,
                 max_queries=1):
        self.data = np.memmap(train_bin(corpus, work), dtype=np.uint16, mode="r")
        self.kit = kit
        self.B, self.T, self.synth_frac = B, T, synth_frac
        self.task_p, self.max_queries = task_p, max_queries
        self.rng = np.random.default_rng(seed)
        self.q = queue.Queue(maxsize=prefetch)
        self.stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _row(self, synth):
        """(ids [T+1], answer mask [T+1], synthetic?)"""
        T1 = self.T + 1
        if synth and self.kit is not None:
            try:
                ex, ans = synthetic.training_sequence(self.kit, self.rng, min(self.T, T1 - 1),
                                                      min_len=min(384, self.T // 2), task_p=self.task_p,
                                                      max_queries=self.max_queries)
                ex = np.concatenate([ex, [synthetic.EOT_ID]])[:T1]
                ans = np.concatenate([ans, [False]])[:T1]
                rest = T1 - len(ex)
                if rest > 0:
                    s = int(self.rng.integers(0, len(self.data) - rest))
                    ex = np.concatenate([ex, self.data[s:s + rest].astype(np.int64)])
                    ans = np.concatenate([ans, np.zeros(rest, bool)])
                return ex, ans, True
            except ValueError:
                pass
        s = int(self.rng.integers(0, len(self.data) - T1))
        return self.data[s:s + T1].astype(np.int64), np.zeros(T1, bool), False

    def _run(self):
        while not self.stop:
            n_syn = int(round(self.B * self.synth_frac))
            rows, masks, flags = [], [], []
            for i in range(self.B):
                r, m, f = self._row(i < n_syn)
                rows.append(r)
                masks.append(m)
                flags.append(f)
            x = torch.from_numpy(np.stack(rows))
            am = torch.from_numpy(np.stack(masks)[:, 1:])  # answer mask of the targets x[:, 1:]
            fl = torch.tensor(flags)
            if torch.cuda.is_available():
                x, am = x.pin_memory(), am.pin_memory()
            while not self.stop:
                try:
                    self.q.put((x, am, fl), timeout=0.5)
                    break
                except queue.Full:
                    pass

    def get(self):
        """(ids [B, T+1], answer mask of the targets [B, T], synthetic-row flags [B])"""
        return self.q.get()

    def close(self):
        self.stop = True


def train_bin(corpus, work=None):
    """Path of the uint16 training array: corpus/train.bin, or corpus/train.bin.xz unpacked once into
    the work dir (the corpus folder itself stays small)."""
    plain = os.path.join(corpus, "train.bin")
    if os.path.exists(plain):
        return plain
    xz = plain + ".xz"
    out = os.path.join(work or corpus, "train.bin")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(xz):
        import lzma
        t0 = time.time()
        with lzma.open(xz, "rb") as f, open(out + ".tmp", "wb") as g:
            while True:
                b = f.read(1 << 24)
                if not b:
                    break
                g.write(b)
        os.replace(out + ".tmp", out)
        log(f"unpacked {xz} -> {out} ({os.path.getsize(out) / 1e6:.0f} MB) in {time.time() - t0:.1f} s")
    return out


def heldout_windows(corpus, T, n, offset=0):
    d = np.fromfile(os.path.join(corpus, "heldout.bin"), dtype=np.uint16)
    n = min(n, (len(d) - offset) // (T + 1))
    return torch.from_numpy(d[offset:offset + n * (T + 1)].astype(np.int64).reshape(n, T + 1))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.work = args.work
        os.makedirs(self.work, exist_ok=True)
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp = torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.cuda or args.cpu_bf16)

    def path(self, name):
        return os.path.join(self.work, name)

    def status(self, **kw):
        p = self.path("status.json")
        st = json.load(open(p)) if os.path.exists(p) else {}
        st.update(kw)
        st["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(p + ".tmp", "w") as f:
            json.dump(st, f, indent=1)
        os.replace(p + ".tmp", p)


def model_config(args):
    if args.tiny:
        return tiny_config(max_position_embeddings=args.seq)
    cfg = ModelConfig(max_position_embeddings=args.seq)
    if args.config_json:
        for k, v in json.loads(args.config_json).items():
            setattr(cfg, k, v)
    return cfg


def save_ckpt(ctx, name, model, opt=None, **extra):
    obj = {"model": model.state_dict(), "cfg": vars(model.cfg).copy(), **extra}
    if opt is not None:
        obj["opt"] = opt.state_dict()
    tmp = ctx.path(name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, ctx.path(name))


def load_ckpt(ctx, name):
    obj = torch.load(ctx.path(name), map_location="cpu", weights_only=False)
    cfg = ModelConfig()
    for k, v in obj["cfg"].items():
        setattr(cfg, k, v)
    model = GlmMoeDsaLM(cfg)
    model.load_state_dict(obj["model"])
    return model, obj


def make_opt(params_groups, lr, cuda):
    kw = dict(lr=lr, betas=(0.9, 0.95), eps=1e-8)
    if cuda:
        kw["fused"] = True
    return torch.optim.AdamW(params_groups, **kw)


def param_groups(params_named, wd):
    decay = [p for n, p in params_named if p.dim() >= 2 and p.requires_grad]
    no = [p for n, p in params_named if p.dim() < 2 and p.requires_grad]
    return [{"params": decay, "weight_decay": wd}, {"params": no, "weight_decay": 0.0}]


def lr_at(frac, step, peak, warmup_steps, decay_start=0.7, floor=0.05):
    """Linear warm-up by steps, constant, then linear decay over the last (1-decay_start) of the time."""
    w = min(1.0, (step + 1) / max(1, warmup_steps))
    if frac <= decay_start:
        d = 1.0
    else:
        d = 1.0 - (1.0 - floor) * min(1.0, (frac - decay_start) / (1.0 - decay_start))
    return peak * w * d


def halve_micro_batch(opt, stage, micro):
    """Out of memory: drop the partial gradients and retry the step with half the micro-batch."""
    opt.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    if micro == 1:
        raise
    micro //= 2
    log(f"{stage}: out of memory, micro-batch now {micro}")
    return micro


def clipped_update(opt, param_sets, clip, stage, step, bad):
    """Clips the gradient norm of each parameter set to `clip`, then steps. A non-finite norm drops
    the update instead (giving up after 20 in a row). Returns (the norms, or None when the update
    was dropped; the count of drops in a row)."""
    norms = [torch.nn.utils.clip_grad_norm_(ps, clip) for ps in param_sets]
    if not all(torch.isfinite(n) for n in norms):
        opt.zero_grad(set_to_none=True)
        bad += 1
        log(f"{stage}: non-finite gradient at step {step}, update skipped ({bad} in a row)")
        if bad >= 20:
            raise RuntimeError(f"{stage}: 20 non-finite gradients in a row")
        return None, bad
    opt.step()
    opt.zero_grad(set_to_none=True)
    return norms, 0


def update_router_bias(model, loads, gamma):
    """Auxiliary-loss-free balancing (DeepSeek-V3): raise the bias of under-loaded experts."""
    moe = [l.mlp for l in model.model.layers if l.is_moe]
    for m, load in zip(moe, loads):
        load = load.float()
        m.gate.e_score_correction_bias.add_(gamma * torch.sign(load.mean() - load))


@torch.no_grad()
def eval_loss(ctx, model, windows, mode="dense", plan=None, bs=4):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(windows), bs):
        w = windows[i:i + bs].to(ctx.dev)
        with ctx.amp:
            logits = model(w[:, :-1], mode=mode, plan=plan)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        tot += float(loss)
        n += w[:, 1:].numel()
    model.train()
    return tot / n


def token_weights(am, answer_weight):
    """Loss weight per target token: answer_weight on the answers of synthetic tasks, 1 elsewhere."""
    return 1.0 + (answer_weight - 1.0) * am.float()


def answer_stats(logits, targets, am):
    """(#answer tokens, #answer tokens predicted right); the argmax runs on the answer rows only."""
    n = int(am.sum())
    if n == 0:
        return 0, 0
    return n, int((logits[am].argmax(-1) == targets[am]).sum())


_PROBE = {}


@torch.no_grad()
def retrieval_probe(ctx, model, kit, mode="dense", n_per_task=6):
    """Greedy exact-match retrieval accuracy on fresh examples built from the held-out sentence pool
    (not the data/ sets), at the training context: a progress signal during training."""
    key = (ctx.args.seq, n_per_task)
    if key not in _PROBE:
        rng = np.random.default_rng(99)
        exs = []
        for task in synthetic.TASKS:
            for i in range(n_per_task):
                p, a = synthetic.make_example(kit, rng, task, ctx.args.seq - 8, "eval",
                                              depth=(i + 0.5) / n_per_task)
                exs.append({"task": task, "prompt_ids": p.tolist(), "answer_ids": a.tolist()})
        _PROBE[key] = exs
    exs = _PROBE[key]
    was = model.training
    model.eval()

    def logits_fn(ids):
        with ctx.amp:
            return model(torch.tensor([ids], device=ctx.dev), mode=mode)[0].float().cpu().numpy()

    acc, ok = synthetic.retrieval_accuracy(logits_fn, exs)
    model.train(was)
    by = {t: sum(o for o, e in zip(ok, exs) if e["task"] == t) / n_per_task for t in synthetic.TASKS}
    return acc, by


def task_probs(a):
    if not a.task_weights:
        return None
    w = np.array([float(x) for x in a.task_weights.split(",")])
    return w / w.sum()


class Timer:
    def __init__(self, minutes, used=0.0):
        self.budget = minutes * 60.0
        self.t0 = time.time() - used

    def elapsed(self):
        return time.time() - self.t0

    def frac(self):
        return min(1.0, self.elapsed() / max(1e-9, self.budget))

    def done(self):
        return self.elapsed() >= self.budget


def write_log(ctx, name, rec):
    with open(ctx.path(name + ".tmp"), "w") as f:
        json.dump(rec, f)
    os.replace(ctx.path(name + ".tmp"), ctx.path(name))


# ----------------------------------------------------------------------------------------------
# stage 1: dense pre-training
# ----------------------------------------------------------------------------------------------
def stage_pretrain(ctx):
    a = ctx.args
    if os.path.exists(ctx.path("pretrain.pt")):
        log("pretrain: done already")
        return
    torch.manual_seed(a.seed)
    resume = os.path.exists(ctx.path("pretrain_partial.pt"))
    if resume:
        model, obj = load_ckpt(ctx, "pretrain_partial.pt")
        log(f"pretrain: resuming at step {obj['step']} ({obj['elapsed']:.0f} s used)")
    elif a.init_from:
        import export as X
        model, _ = X.load_checkpoint(a.init_from)
        model.train()
        obj = {"step": 0, "elapsed": 0.0, "curve": [], "evals": []}
        log(f"pretrain: continuing from the checkpoint {a.init_from}")
    else:
        model, obj = GlmMoeDsaLM(model_config(a)), {"step": 0, "elapsed": 0.0, "curve": [], "evals": []}
    model.to(ctx.dev).train()
    counts = parameter_counts(model)
    log("pretrain: parameters", counts)
    opt = make_opt(param_groups(list(model.named_parameters()), a.wd), a.lr, ctx.cuda)
    if resume and "opt" in obj:
        opt.load_state_dict(obj["opt"])
    kit = synthetic.Kit.load(os.path.join(a.corpus, "synth_kit.npz"))
    B, T = a.batch, a.seq
    micro, accum = B, 1
    data = Batches(a.corpus, B, T, a.synth_frac, a.seed + obj["step"], kit, work=ctx.work, task_p=task_probs(a),
                   max_queries=a.queries)
    held = heldout_windows(a.corpus, T, a.eval_windows)
    timer = Timer(a.minutes_pretrain, obj["elapsed"])
    step, curve, evals = obj["step"], obj["curve"], obj["evals"]
    bad = 0
    last_eval = last_ckpt = time.time()
    tok_t0, tok_n = time.time(), 0
    ctx.status(stage="pretrain", state="running", params=counts)
    while not timer.done() and (a.max_steps <= 0 or step < a.max_steps):
        x, am, synth = data.get()
        x, am = x.to(ctx.dev, non_blocking=True), am.to(ctx.dev, non_blocking=True)
        lr = lr_at(timer.frac(), step, a.lr, a.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        try:
            loads = None
            row_loss = torch.zeros(B, device=ctx.dev)
            ans_n, ans_ok = 0, 0
            for m0 in range(0, B, micro):
                xb = x[m0:m0 + micro]
                st = {"expert_load": []}
                with ctx.amp:
                    logits = model(xb[:, :-1], mode="dense", st=st)
                    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                         reduction="none").view(xb.shape[0], -1)
                    amb = am[m0:m0 + micro]
                    loss = (ce * token_weights(amb, a.answer_weight)).mean() * (xb.shape[0] / B)
                n, c = answer_stats(logits.detach(), xb[:, 1:], amb)
                ans_n, ans_ok = ans_n + n, ans_ok + c
                loss.backward()
                row_loss[m0:m0 + micro] = ce.detach().mean(-1)
                loads = st["expert_load"] if loads is None else [l0 + l1 for l0, l1 in zip(loads, st["expert_load"])]
                del logits, ce, loss
        except torch.OutOfMemoryError:
            micro = halve_micro_batch(opt, "pretrain", micro)
            continue
        norms, bad = clipped_update(opt, [model.parameters()], a.clip, "pretrain", step, bad)
        if norms is None:
            continue
        gn = norms[0]
        with torch.no_grad():
            update_router_bias(model, loads, a.bias_gamma)
        step += 1
        tok_n += B * T
        if step % a.log_every == 0 or step == 1:
            rl = row_loss.float().cpu()
            s = synth.bool()
            rec = {"step": step, "t": round(timer.elapsed(), 1), "lr": lr, "loss": float(rl.mean()),
                   "loss_text": float(rl[~s].mean()) if (~s).any() else None,
                   "loss_synth": float(rl[s].mean()) if s.any() else None, "grad_norm": float(gn),
                   "answer_acc": ans_ok / ans_n if ans_n else None,
                   "tok_per_s": round(tok_n / max(1e-9, time.time() - tok_t0))}
            curve.append(rec)
            tok_t0, tok_n = time.time(), 0
            log(f"pretrain step {step} loss {rec['loss']:.3f} (text {rec['loss_text'] or 0:.3f} synth "
                f"{rec['loss_synth'] or 0:.3f} answers {rec['answer_acc'] or 0:.2f}) lr {lr:.2e} gn {rec['grad_norm']:.2f} {rec['tok_per_s']} tok/s "
                f"t {rec['t']:.0f}s")
        if time.time() - last_eval > a.eval_every or (a.tiny and step % 10 == 0):
            hl = eval_loss(ctx, model, held)
            racc, rby = retrieval_probe(ctx, model, kit)
            evals.append({"step": step, "t": round(timer.elapsed(), 1), "heldout_dense": hl, "retrieval_dense": racc,
                          "retrieval_dense_by_task": rby})
            log(f"pretrain eval step {step}: held-out loss {hl:.4f}, retrieval probe {racc:.2f} {rby}")
            last_eval = time.time()
            write_log(ctx, "log_pretrain.json", {"curve": curve, "evals": evals, "params": counts})
        if time.time() - last_ckpt > a.ckpt_every:
            save_ckpt(ctx, "pretrain_partial.pt", model, opt, step=step, elapsed=timer.elapsed(), curve=curve,
                      evals=evals)
            last_ckpt = time.time()
    data.close()
    hl = eval_loss(ctx, model, held)
    racc, rby = retrieval_probe(ctx, model, kit)
    evals.append({"step": step, "t": round(timer.elapsed(), 1), "heldout_dense": hl, "retrieval_dense": racc,
                  "retrieval_dense_by_task": rby})
    log(f"pretrain: finished at step {step}, {timer.elapsed():.0f} s, held-out loss {hl:.4f}, retrieval probe "
        f"{racc:.2f} {rby}")
    write_log(ctx, "log_pretrain.json", {"curve": curve, "evals": evals, "params": counts, "steps": step,
                                         "seconds": timer.elapsed(), "tokens": step * B * T})
    save_ckpt(ctx, "pretrain.pt", model, step=step)
    if os.path.exists(ctx.path("pretrain_partial.pt")):
        os.remove(ctx.path("pretrain_partial.pt"))
    ctx.status(stage="pretrain", state="done", pretrain_steps=step, pretrain_heldout=hl)


# ----------------------------------------------------------------------------------------------
# stage 2: indexer warm-up (dense attention, model frozen)
# ----------------------------------------------------------------------------------------------
def stage_warmup(ctx):
    a = ctx.args
    if os.path.exists(ctx.path("warmup.pt")):
        log("warmup: done already")
        return
    model, _ = load_ckpt(ctx, "pretrain.pt")
    model.to(ctx.dev).train()
    for n, p in model.named_parameters():
        p.requires_grad_(".indexer." in n)
    opt = make_opt(param_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad], 0.0),
                   a.lr_warmup, ctx.cuda)
    kit = synthetic.Kit.load(os.path.join(a.corpus, "synth_kit.npz"))
    B, T = a.batch_warmup, a.seq
    micro = B
    data = Batches(a.corpus, B, T, a.synth_frac, a.seed + 1000, kit, work=ctx.work, task_p=task_probs(a),
                   max_queries=a.queries)
    timer = Timer(a.minutes_warmup)
    L = model.cfg.num_hidden_layers
    step, curve, bad = 0, [], 0
    ctx.status(stage="warmup", state="running")
    while not timer.done() and (a.max_steps <= 0 or step < a.max_steps):
        x, _, _ = data.get()
        x = x.to(ctx.dev, non_blocking=True)
        lr = lr_at(timer.frac(), step, a.lr_warmup, 10, decay_start=0.8)
        for g in opt.param_groups:
            g["lr"] = lr
        try:
            kls = []
            for m0 in range(0, B, micro):
                xb = x[m0:m0 + micro, :-1]
                st = {"indexer_loss": "dense_kl", "kl_backward": True, "kl_scale": (xb.shape[0] / B) / L}
                with ctx.amp:
                    model.hidden(xb, mode="dense", st=st)
                kls.append(torch.stack(st["kl"]))
        except torch.OutOfMemoryError:
            micro = halve_micro_batch(opt, "warmup", micro)
            continue
        norms, bad = clipped_update(opt, [model.indexer_parameters()], a.clip, "warmup", step, bad)
        if norms is None:
            continue
        step += 1
        if step % a.log_every == 0 or step == 1:
            kl = torch.stack(kls).float().mean(0).cpu()
            rec = {"step": step, "t": round(timer.elapsed(), 1), "lr": lr, "kl_mean": float(kl.mean()),
                   "kl_per_layer": [round(float(v), 4) for v in kl]}
            curve.append(rec)
            log(f"warmup step {step} KL {rec['kl_mean']:.4f} per layer {rec['kl_per_layer']} t {rec['t']:.0f}s")
    data.close()
    for p in model.parameters():
        p.requires_grad_(True)
    write_log(ctx, "log_warmup.json", {"curve": curve, "steps": step, "seconds": timer.elapsed(),
                                       "tokens": step * B * T})
    save_ckpt(ctx, "warmup.pt", model, step=step)
    ctx.status(stage="warmup", state="done", warmup_steps=step, warmup_kl=curve[-1]["kl_mean"] if curve else None)


# ----------------------------------------------------------------------------------------------
# stage 3: sparse training
# ----------------------------------------------------------------------------------------------
def probe_sparse_attention(ctx, cfg, T):
    """Pick the first masked-attention path whose forward and backward run here (bf16, real shapes)."""
    from model import sparse_attention
    H, dqk, dv = cfg.num_attention_heads, cfg.qk_head_dim, cfg.v_head_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    allowed = (torch.rand(1, T, T, generator=g) < 0.1).tril().to(ctx.dev)
    allowed |= torch.eye(T, dtype=torch.bool, device=ctx.dev)[None]
    for mode in ("bool", "float", "math"):
        try:
            q = torch.randn(1, H, T, dqk, device=ctx.dev, requires_grad=True)
            k = torch.randn(1, H, T, dqk, device=ctx.dev, requires_grad=True)
            v = torch.randn(1, H, T, dv, device=ctx.dev, requires_grad=True)
            st = {"sdpa_mode": mode}
            with ctx.amp:
                o = sparse_attention(q, k, v, allowed, dqk ** -0.5, st)
            if st["sdpa_mode"] != mode:
                continue
            o.float().square().mean().backward()
            if torch.isfinite(o).all() and torch.isfinite(q.grad).all():
                return mode
        except RuntimeError as e:
            log(f"sparse: attention path '{mode}' failed: {str(e)[:200]}")
    return "math"


def stage_sparse(ctx):
    a = ctx.args
    if os.path.exists(ctx.path("sparse.pt")):
        log("sparse: done already")
        return
    model, _ = load_ckpt(ctx, "warmup.pt")
    model.to(ctx.dev).train()
    main = [(n, p) for n, p in model.named_parameters() if ".indexer." not in n]
    idx = [(n, p) for n, p in model.named_parameters() if ".indexer." in n]
    groups = param_groups(main, a.wd)
    for g in groups:
        g["base"] = a.lr_sparse
    gi = param_groups(idx, 0.0)
    for g in gi:
        g["base"] = a.lr_sparse_indexer
    opt = make_opt(groups + gi, a.lr_sparse, ctx.cuda)
    kit = synthetic.Kit.load(os.path.join(a.corpus, "synth_kit.npz"))
    B, T = a.batch_sparse, a.seq
    micro = B
    data = Batches(a.corpus, B, T, a.synth_frac, a.seed + 2000, kit, work=ctx.work, task_p=task_probs(a),
                   max_queries=a.queries)
    held = heldout_windows(a.corpus, T, a.eval_windows)
    timer = Timer(a.minutes_sparse)
    L = model.cfg.num_hidden_layers
    step, curve, evals, bad = 0, [], [], 0
    last_eval = time.time()
    sdpa_state = {"sdpa_mode": probe_sparse_attention(ctx, model.cfg, T)}
    log(f"sparse: attention path '{sdpa_state['sdpa_mode']}'")
    ctx.status(stage="sparse", state="running")
    while not timer.done() and (a.max_steps <= 0 or step < a.max_steps):
        x, am, synth = data.get()
        x, am = x.to(ctx.dev, non_blocking=True), am.to(ctx.dev, non_blocking=True)
        f = lr_at(timer.frac(), step, 1.0, 20, decay_start=0.5, floor=0.1)
        for g in opt.param_groups:
            g["lr"] = g["base"] * f
        try:
            loads, kls = None, []
            row_loss = torch.zeros(B, device=ctx.dev)
            ans_n, ans_ok = 0, 0
            for m0 in range(0, B, micro):
                xb = x[m0:m0 + micro]
                st = {"indexer_loss": "sparse_kl", "kl_backward": True, "kl_scale": (xb.shape[0] / B) / L,
                      "kl_rows": max(1, a.kl_rows * xb.shape[0] // B), "expert_load": [], **sdpa_state}
                with ctx.amp:
                    logits = model(xb[:, :-1], mode="sparse", st=st)
                    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                         reduction="none").view(xb.shape[0], -1)
                    amb = am[m0:m0 + micro]
                    loss = (ce * token_weights(amb, a.answer_weight)).mean() * (xb.shape[0] / B)
                n, c = answer_stats(logits.detach(), xb[:, 1:], amb)
                ans_n, ans_ok = ans_n + n, ans_ok + c
                loss.backward()
                if st.get("sdpa_mode") and st.get("sdpa_mode") != sdpa_state.get("sdpa_mode"):
                    sdpa_state["sdpa_mode"] = st["sdpa_mode"]
                    log(f"sparse: attention fell back to {st['sdpa_mode']}")
                row_loss[m0:m0 + micro] = ce.detach().mean(-1)
                kls.append(torch.stack(st["kl"]))
                loads = st["expert_load"] if loads is None else [l0 + l1 for l0, l1 in zip(loads, st["expert_load"])]
                del logits, ce, loss
        except torch.OutOfMemoryError:
            micro = halve_micro_batch(opt, "sparse", micro)
            continue
        norms, bad = clipped_update(opt, [[p for _, p in main], [p for _, p in idx]], a.clip, "sparse", step, bad)
        if norms is None:
            continue
        gn = norms[0]
        with torch.no_grad():
            update_router_bias(model, loads, a.bias_gamma)
        step += 1
        if step % a.log_every == 0 or step == 1:
            rl = row_loss.float().cpu()
            s = synth.bool()
            kl = torch.stack(kls).float().mean(0).cpu()
            rec = {"step": step, "t": round(timer.elapsed(), 1), "lr_factor": f, "loss": float(rl.mean()),
                   "loss_text": float(rl[~s].mean()) if (~s).any() else None,
                   "loss_synth": float(rl[s].mean()) if s.any() else None, "grad_norm": float(gn),
                   "answer_acc": ans_ok / ans_n if ans_n else None,
                   "kl_mean": float(kl.mean()), "kl_per_layer": [round(float(v), 4) for v in kl]}
            curve.append(rec)
            log(f"sparse step {step} loss {rec['loss']:.3f} (text {rec['loss_text'] or 0:.3f} synth "
                f"{rec['loss_synth'] or 0:.3f} answers {rec['answer_acc'] or 0:.2f}) KL {rec['kl_mean']:.4f} t {rec['t']:.0f}s")
        if time.time() - last_eval > a.eval_every or (a.tiny and step % 10 == 0):
            hd, hs = eval_loss(ctx, model, held, "dense"), eval_loss(ctx, model, held, "sparse")
            racc, rby = retrieval_probe(ctx, model, kit, "sparse")
            evals.append({"step": step, "t": round(timer.elapsed(), 1), "heldout_dense": hd, "heldout_sparse": hs,
                          "retrieval_sparse": racc, "retrieval_sparse_by_task": rby})
            log(f"sparse eval step {step}: held-out dense {hd:.4f} sparse {hs:.4f}, retrieval probe (sparse) "
                f"{racc:.2f} {rby}")
            last_eval = time.time()
            write_log(ctx, "log_sparse.json", {"curve": curve, "evals": evals})
    data.close()
    hd, hs = eval_loss(ctx, model, held, "dense"), eval_loss(ctx, model, held, "sparse")
    evals.append({"step": step, "t": round(timer.elapsed(), 1), "heldout_dense": hd, "heldout_sparse": hs})
    log(f"sparse: finished at step {step}: held-out dense {hd:.4f} sparse {hs:.4f}")
    write_log(ctx, "log_sparse.json", {"curve": curve, "evals": evals, "steps": step, "seconds": timer.elapsed(),
                                       "tokens": step * B * T, "attention_path": sdpa_state.get("sdpa_mode", "bool")})
    save_ckpt(ctx, "sparse.pt", model, step=step)
    ctx.status(stage="sparse", state="done", sparse_steps=step, sparse_heldout_dense=hd, sparse_heldout_sparse=hs)


# ----------------------------------------------------------------------------------------------
# stage 4: export + verify; stage 5: evaluation
# ----------------------------------------------------------------------------------------------
def latest_ckpt(ctx):
    for name in ("sparse.pt", "warmup.pt", "pretrain.pt", "pretrain_partial.pt"):
        if os.path.exists(ctx.path(name)):
            return name
    return None


def stage_export(ctx):
    import export as X
    a = ctx.args
    name = latest_ckpt(ctx)
    if name is None:
        raise RuntimeError("no checkpoint to export")
    model, _ = load_ckpt(ctx, name)
    out = ctx.path(os.path.join("export", a.name))
    info = X.export(model, out, a.corpus)
    info["from_checkpoint"] = name
    log(f"export: {name} -> {out}: {info}")
    held = np.fromfile(os.path.join(a.corpus, "heldout.bin"), dtype=np.uint16)
    n = min(a.verify_len, a.seq)
    ids = torch.from_numpy(held[-n:].astype(np.int64))[None]
    try:
        rep = X.verify(out, ids, a.device)
    except Exception as e:  # noqa: BLE001 - report, do not lose the export
        rep = {"ok": False, "error": repr(e), "traceback": traceback.format_exc()}
    info["verify"] = rep
    log(f"verify: ok={rep.get('ok')} " + json.dumps({k: v for k, v in rep.items() if isinstance(v, dict)})[:1500])
    with open(ctx.path("export.json"), "w") as f:
        json.dump(info, f, indent=1)
    ctx.status(stage="export", state="done", export_from=name, verify_ok=rep.get("ok"))


def stage_eval(ctx):
    import evaluate
    a = ctx.args
    out = ctx.path(os.path.join("export", a.name))
    argv = ["--model", out, "--data", a.data, "--corpus", a.corpus, "--out", ctx.path("eval"), "--device", a.device,
            "--work", ctx.work, "--ctx", str(a.seq)]
    if a.tiny:
        argv += ["--tiny"]
    if a.eval_greedy:
        argv += ["--greedy"]
    evaluate.main(argv)
    ctx.status(stage="eval", state="done")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", help="pretrain|warmup|sparse|export|eval|all, or a comma list")
    ap.add_argument("--work", default="/tmp/work")
    ap.add_argument("--corpus", default=os.path.join(HERE, "..", "..", "corpus"))
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "data"))
    ap.add_argument("--name", default="dsa-mini")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: 3 layers, context 256, few steps")
    ap.add_argument("--config-json", default=None, help="override ModelConfig fields, e.g. '{\"hidden_size\": 320}'")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batch-warmup", type=int, default=8)
    ap.add_argument("--batch-sparse", type=int, default=16)
    ap.add_argument("--kl-rows", type=int, default=4, help="rows of each sparse-stage batch that carry the KL")
    ap.add_argument("--synth-frac", type=float, default=0.3)
    ap.add_argument("--task-weights", default="", help="relative frequency of passkey,kv,copy (default equal)")
    ap.add_argument("--queries", type=int, default=1, help="questions per kv / copy training example")
    ap.add_argument("--answer-weight", type=float, default=1.0, help="loss weight of synthetic answer tokens")
    ap.add_argument("--init-from", default="", help="start pre-training from this Hugging Face checkpoint")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-warmup", type=float, default=1e-3)
    ap.add_argument("--lr-sparse", type=float, default=3e-4)
    ap.add_argument("--lr-sparse-indexer", type=float, default=3e-4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--bias-gamma", type=float, default=1e-3)
    ap.add_argument("--minutes-pretrain", type=float, default=10.5)
    ap.add_argument("--minutes-warmup", type=float, default=1.5)
    ap.add_argument("--minutes-sparse", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=0, help="cap on steps per stage (0: none)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=float, default=90.0, help="seconds")
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--ckpt-every", type=float, default=180.0, help="seconds")
    ap.add_argument("--verify-len", type=int, default=2048)
    ap.add_argument("--no-eval-greedy", dest="eval_greedy", action="store_false",
                    help="skip the greedy IndexCache search in the evaluation")
    ap.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU too (testing)")
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args(argv)
    a.corpus, a.data = os.path.abspath(a.corpus), os.path.abspath(a.data)
    if a.tiny:
        for k, v in dict(seq=256, batch=4, batch_warmup=2, batch_sparse=4, warmup_steps=5, log_every=5,
                         eval_windows=2, verify_len=200, lr=3e-3, minutes_pretrain=0.6, minutes_warmup=0.3,
                         minutes_sparse=0.5).items():
            if getattr(a, k) == ap.get_default(k):
                setattr(a, k, v)
    stages = STAGES if a.stage == "all" else tuple(a.stage.split(","))
    ctx = Ctx(a)
    log(f"train.py: stages {stages} on {ctx.dev} ({torch.cuda.get_device_name(0) if ctx.cuda else 'cpu'}), "
        f"torch {torch.__version__}, work {a.work}")
    ctx.status(args=vars(a), stages=list(stages), failed=None)
    fns = {"pretrain": stage_pretrain, "warmup": stage_warmup, "sparse": stage_sparse, "export": stage_export,
           "eval": stage_eval}
    failed = None
    for s in stages:
        if failed and s in ("pretrain", "warmup", "sparse"):
            log(f"{s}: skipped (an earlier stage failed)")
            continue
        t0 = time.time()
        try:
            fns[s](ctx)
        except Exception:  # noqa: BLE001 - keep going to export what exists
            tb = traceback.format_exc()
            log(f"{s}: FAILED\n{tb}")
            failed = failed or s
            ctx.status(failed=failed, **{f"{s}_error": tb[-3000:]})
        log(f"{s}: {time.time() - t0:.0f} s")
        if ctx.cuda:
            torch.cuda.empty_cache()
    ctx.status(state="finished", failed=failed)
    log("ALL DONE" + (f" (first failure: {failed})" if failed else ""))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
