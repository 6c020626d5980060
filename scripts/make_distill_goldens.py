#!/usr/bin/env python3
"""Golden losses and gradients for the multi-layer indexer distillation losses (IndexCache training-aware).

Usage:
    python3 scripts/make_distill_goldens.py --out tests/data/golden_distill

Runs on the CPU in float32 (TF32 off, one intra-op thread, eager attention), deterministic. No new
weights: the existing golden models are loaded with transformers' AutoModelForCausalLM.from_pretrained
(dtype float32, attn_implementation "eager"), exactly as scripts/make_goldens.py's reload check does:

  glm_a  tests/data/golden/glm_a  glm_moe_dsa   f32 checkpoint             plan FSSFSF (groups 3, 2, 1)
  dsv_a  tests/data/golden/dsv_a  deepseek_v32  bf16 checkpoint, 2 shards  plan FSFSSS (groups 2, 4)

Token ids: the model dir's ids.txt (whitespace-separated ints, T of them: glm_a 40, dsv_a 48) if the
top-k boundary check below passes on every layer of the all-F teacher; otherwise the script says which
layer / row ties and tries torch.randint(0, vocab, (T,), generator=manual_seed(seed)) for seed = 7000,
7001, ... (glm_a) or 8000, ... (dsv_a), same T, keeping the first that passes. Result: dsv_a uses its
ids.txt; glm_a's ids.txt has a near-tie (layer 0, row 38: gap 0.897x the threshold), so glm_a uses
seed 7003 (7000-7002 also tie). The ids used are stored in input_ids, the seed in the metadata.

Definitions (l, j layers; t query, s key; all causal, s <= t):

* Teacher forward: the model under the ALL-F plan (every layer runs its own indexer and its normal
  sparse attention), float32, batch 1, no cache. h_l = output of layer l's input_layernorm, [T, hidden]
  (what the attention and the indexer receive; captured by a forward hook, checked equal to the
  attention module's hidden_states argument).
* Dense attention distribution: p_l[t, s] = mean over the attention heads h of
  softmax_{s<=t}( q_{t,h} . k_{s,h} * scaling ), 0 for s > t. q, k are computed from h_l with the
  layer's own modules, as the transformers attention forward does before its sparse mask:
  q_a_proj -> q_a_layernorm -> q_b_proj, split (nope, rope); kv_a_proj_with_mqa -> split (latent,
  k_rope), kv_a_layernorm(latent) -> the module's expand_kv (kv_b_proj) -> k_nope; the module family's
  apply_rotary_pos_emb_interleave on the rope parts with the (cos, sin) the model handed to that layer;
  scaling = the module's own `scaling` (qk_head_dim^-0.5, times the YaRN mscale^2 for dsv_a).
  NO top-k mask. Verified: the same scores with the layer's actual all-F selection applied reproduce
  the module's attention weights and its output (after o_proj) to 1e-5.
* Student scores of an F layer l: I_l[t, s] = layer l's indexer (its wq_b, wk, k_norm = LayerNorm with
  bias, weights_proj) on h_l and qr_l = q_a_layernorm(q_a_proj(h_l)):
      q_I = RoPE(wq_b(qr_l)) [T, Hi, Di], k_I = RoPE(k_norm(wk(h_l))) [T, Di] (RoPE on the first
      qk_rope_head_dim dims; interleaved for glm_moe_dsa, half-split for deepseek_v32),
      w = weights_proj(h_l) * Hi^-0.5,
      I[t, s] = sum_h w[t, h] * ReLU(q_I[t, h] . k_I[s] * Di^-0.5),  -inf for s > t.
  transformers' indexer forward is @torch.no_grad and returns only the top-k indices, so the scores are
  recomputed with the module's own submodules and the same torch operations as its forward (like
  make_goldens.py's indexer_scores); checked: their top-k equals the module's indices bit for bit, and
  they equal the index_scores.{l} of tests/data/golden/<model>/expected.FFFFFF.safetensors.
  Autograd differentiates the indexer module's parameters; requires_grad is on only for them.
* Plan: a string of F/S over the layers, first char F. For each F layer l the served set is
  J_l = {l, l+1, ..., l+m}: l and the S layers after it up to the next F layer.
* Dense stage: q_t = softmax_{s<=t} I_l[t, :]. pbar_t = mean_{j in J_l} p_j[t, :] ("multi") or
  p_l[t, :] ("single"). L = (1/T) sum_t sum_{s<=t} pbar (log pbar - log q), with 0 log 0 = 0.
* Sparse stage: K_t = indices of the top min(index_topk, t+1) values of I_l[t, s<=t], detached (a fixed
  mask, no gradient through the selection). For each j in J_l and each of its heads, the head's dense
  attention restricted to K_t and renormalised to sum 1 over K_t (the distribution that head's sparse
  attention over K_t has), then averaged over heads; pbar_t = mean over J_l of those ("multi") or layer l's ("single"); q_t = softmax of I_l[t, K_t] over K_t.
  L = (1/T) sum_t KL(pbar_t || q_t) over K_t.
* Top-k boundary: for every F layer and every row t with t+1 > k the k-th and (k+1)-th largest scores
  must differ by more than 1e-4 * (1 + |k-th score|) (asserted).
* Gradients dL/dparam for each of layer l's indexer tensors, checkpoint names
  model.layers.{l}.self_attn.indexer.{wq_b.weight, wk.weight, k_norm.weight, k_norm.bias,
  weights_proj.weight} (no linear has a bias), stored under short names wq_b, wk, k_norm_w, k_norm_b,
  weights_proj.

Output: <out>/<model>.safetensors with
    input_ids                                 int32   [T]
    p.{l}                                     float32 [H, T, T]    every layer, per head (0 above the diagonal)
    h.{l}                                     float32 [T, hidden]  every layer
    index_scores.{l}                          float32 [T, T]       F layers (-inf above the diagonal)
    loss.{stage}.{loss}.{l}                   float32 [1]          F layers, stage dense|sparse, loss multi|single
    grad.{stage}.{loss}.{l}.{short}           float32 (param shape)
and sorted string metadata {model, family, plan, groups, T, k, torch, transformers, ids_source, ids_seed}.

Self-checks: (1) p / scores / selection reproduce the module (above); (2) for a group of one layer
(m = 0) multi == single exactly (bitwise, losses and gradients) -- glm_a layer 5 is such a group, and
the check is also run on every F layer with J = {l}; (3) torch.autograd.gradcheck in float64 of the
dense and sparse multi losses w.r.t. all five indexer tensors of one layer per model (float64 copy of
the module, fixed selection); (4) the float32 gradients are compared with the float64 ones (max
relative error printed).
"""

import argparse
import copy
import json
import os
import sys

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as dsv_mod  # noqa: E402
from transformers.models.glm_moe_dsa import modeling_glm_moe_dsa as glm_mod  # noqa: E402

GAP_REL = 1e-4
MAX_SEEDS = 100
PARAMS = [("wq_b", "wq_b.weight"), ("wk", "wk.weight"), ("k_norm_w", "k_norm.weight"),
          ("k_norm_b", "k_norm.bias"), ("weights_proj", "weights_proj.weight")]
MODELS = [
    dict(name="glm_a", dir="tests/data/golden/glm_a", plan="FSSFSF", gradcheck_layer=3, ids_seed=7000),
    dict(name="dsv_a", dir="tests/data/golden/dsv_a", plan="FSFSSS", gradcheck_layer=0, ids_seed=8000),
]


def family_mod(family):
    return glm_mod if family == "glm_moe_dsa" else dsv_mod


def groups_of(plan):
    assert plan[0] == "F" and set(plan) <= {"F", "S"}
    out = {}
    for l, c in enumerate(plan):
        if c == "F":
            cur = l
            out[cur] = [l]
        else:
            out[cur].append(l)
    return out


# ----------------------------------------------------------------------------------------------
# teacher


def load_model(d):
    model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert not info["unexpected_keys"], info["unexpected_keys"]
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32
        p.requires_grad_(False)
    return model


def teacher_forward(model, ids):
    """All-F forward; returns per-layer captures."""
    cap = {}
    handles = []
    for l, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        assert attn.indexer is not None, f"layer {l} has no indexer (not all-F)"
        c = cap.setdefault(l, {})

        def ln_hook(mod, args, out, c=c):
            c["h_ln"] = out.detach().clone()

        def attn_hook(mod, args, kwargs, out, c=c):
            hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            c["h"] = hs.detach().clone()
            c["pos_emb"] = tuple(x.detach().clone() for x in kwargs["position_embeddings"])
            c["mask"] = kwargs["attention_mask"].detach().clone()
            c["attn_out"] = out[0].detach().clone()
            c["attn_w"] = out[1].detach().clone()

        def idx_hook(mod, args, kwargs, out, c=c):
            c["topk"] = out.detach().clone()
            c["idx_mask"] = args[3].detach().clone()

        handles.append(layer.input_layernorm.register_forward_hook(ln_hook))
        handles.append(attn.register_forward_hook(attn_hook, with_kwargs=True))
        handles.append(attn.indexer.register_forward_hook(idx_hook, with_kwargs=True))
    with torch.no_grad():
        model(input_ids=ids[None], use_cache=False)
    for hd in handles:
        hd.remove()
    for l, c in cap.items():
        assert torch.equal(c["h"], c["h_ln"]), f"layer {l}: attention input != input_layernorm output"
    return cap


def attention_scores(family, attn, h, pos_emb):
    """The module's MLA query/key states from h [1,T,hidden] -> scaled logits [1,H,T,T], values [1,H,T,dv]."""
    mod = family_mod(family)
    b, T = h.shape[:2]
    q_resid = attn.q_a_layernorm(attn.q_a_proj(h))
    q_states = attn.q_b_proj(q_resid).view(b, T, -1, attn.qk_head_dim).transpose(1, 2)
    q_pass, q_rot = torch.split(q_states, [attn.qk_nope_head_dim, attn.qk_rope_head_dim], dim=-1)
    ckv = attn.kv_a_proj_with_mqa(h)
    kv_pass, k_rot = torch.split(ckv, [attn.kv_lora_rank, attn.qk_rope_head_dim], dim=-1)
    k_pass = attn.kv_a_layernorm(kv_pass).view(b, 1, T, attn.kv_lora_rank)
    k_rot = k_rot.view(b, 1, T, attn.qk_rope_head_dim)
    cos, sin = pos_emb
    q_rot, k_rot = mod.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
    q = torch.cat((q_pass, q_rot), dim=-1)
    k, v = attn.expand_kv(k_pass, k_rot)
    logits = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    return logits, v, q_resid


def dense_p_and_check(family, attn, c, T, k):
    """p_l [T,T] (dense, head mean); asserts the top-k-masked version reproduces the module."""
    with torch.no_grad():
        logits, v, q_resid = attention_scores(family, attn, c["h"], c["pos_emb"])
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        dense = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)  # [1,H,T,T]
        p = dense[0].mean(0)
        p_heads = dense[0].contiguous()  # [H,T,T]: the sparse stage renormalises each head
        # sparse check: the layer's actual all-F selection
        sel = torch.zeros(1, T, T, dtype=torch.bool).scatter(-1, c["topk"].long(), True)
        keep = (sel & causal).unsqueeze(1)
        sp = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        err_w = (sp - c["attn_w"]).abs().max().item()
        out = torch.matmul(sp, v).transpose(1, 2).reshape(1, T, -1)
        out = attn.o_proj(out)
        err_o = (out - c["attn_out"]).abs().max().item()
        assert err_w < 1e-5 and err_o < 1e-5, (err_w, err_o)
    return p.contiguous(), p_heads, q_resid.detach(), err_w, err_o


# ----------------------------------------------------------------------------------------------
# student


def index_scores(family, idx, h, qr, pos_emb):
    """Indexer scores [T,T] (finite everywhere; causal masking is the caller's), differentiable.
    Same torch operations as the transformers indexer forward (which is @no_grad and returns indices)."""
    mod = family_mod(family)
    rope = mod.apply_rotary_pos_emb_interleave if family == "glm_moe_dsa" else mod.apply_rotary_pos_emb
    b, T, _ = h.shape
    cos, sin = pos_emb
    q = idx.wq_b(qr).view(b, T, idx.n_heads, idx.head_dim)
    q_rot, q_pass = torch.split(q, [idx.qk_rope_head_dim, idx.head_dim - idx.qk_rope_head_dim], dim=-1)
    kk = idx.k_norm(idx.wk(h)).unsqueeze(2)
    k_rot, k_pass = torch.split(kk, [idx.qk_rope_head_dim, idx.head_dim - idx.qk_rope_head_dim], dim=-1)
    q_rot, k_rot = rope(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    q = torch.cat([q_rot, q_pass], dim=-1)
    kk = torch.cat([k_rot, k_pass], dim=-1).squeeze(2)
    scores = torch.matmul(q, kk.transpose(-1, -2).unsqueeze(1)) * idx.softmax_scale  # [B,T,H,T]
    scores = torch.relu(scores)
    w = idx.weights_proj(h.to(idx.weights_proj.weight.dtype)) * (idx.n_heads ** -0.5)
    return torch.matmul(w.unsqueeze(-2), scores).squeeze(-2)[0]  # [T,T]


def kl_loss(I, mask, ps):
    """(1/T) sum_t KL(pbar_t || softmax(I_t over mask_t)); pbar = mean over layers j and heads h of
    layer j's head-h attention restricted to mask_t and renormalised there (the distribution that
    head's sparse attention over K_t has). ps: list of [H,T,T] per-head dense teacher distributions
    (constants). Dense stage: the mask is causal, the renormalisation a no-op, pbar = mean_j p_j."""
    T = I.shape[0]
    rs = []
    for p in ps:
        pr = p.masked_fill(~mask, 0.0)
        rs.append((pr / pr.sum(-1, keepdim=True)).mean(0))
    pbar = torch.stack(rs).mean(0)
    logq = torch.log_softmax(I.masked_fill(~mask, float("-inf")), dim=-1)
    terms = torch.where(mask, torch.xlogy(pbar, pbar) - pbar * torch.where(mask, logq, 0.0), 0.0)
    return terms.sum() / T


def selection_mask(I_causal, k):
    """K_t: top min(k, t+1) over s<=t, as a bool mask [T,T]; also the boundary check."""
    T = I_causal.shape[0]
    mask = torch.zeros(T, T, dtype=torch.bool)
    worst = float("inf")
    for t in range(T):
        row = I_causal[t, : t + 1]
        kt = min(k, t + 1)
        vals, ind = row.topk(kt)
        mask[t, ind] = True
        if t + 1 > k:
            srt = row.sort(descending=True).values
            gap = (srt[k - 1] - srt[k]).item()
            need = GAP_REL * (1.0 + abs(srt[k - 1].item()))
            worst = min(worst, gap / need)
    return mask, worst


def boundary_gaps(family, model, cap, T, k):
    """Per layer (all layers: every one is F in the teacher): (min gap/threshold, row, k-th, (k+1)-th)."""
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = {}
    with torch.no_grad():
        for l, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            c = cap[l]
            qr = attn.q_a_layernorm(attn.q_a_proj(c["h"]))
            I = index_scores(family, attn.indexer, c["h"], qr, c["pos_emb"]).masked_fill(~causal, float("-inf"))
            best = (float("inf"), -1, 0.0, 0.0)
            for t in range(k, T):
                srt = I[t, : t + 1].sort(descending=True).values
                r = (srt[k - 1] - srt[k]).item() / (GAP_REL * (1.0 + abs(srt[k - 1].item())))
                if r < best[0]:
                    best = (r, t, srt[k - 1].item(), srt[k].item())
            out[l] = best
    return out


def losses_and_grads(family, idx, h, qr, pos_emb, ps_multi, p_single, k, sparse_mask=None):
    """Returns {(stage, loss): (L, {short: grad})} and the causal scores."""
    T = h.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    params = [dict(idx.named_parameters())[full] for _, full in PARAMS]
    res = {}
    I_raw = index_scores(family, idx, h, qr, pos_emb)
    I_c = I_raw.detach().masked_fill(~causal, float("-inf"))
    if sparse_mask is None:
        sparse_mask, _ = selection_mask(I_c, k)
    for stage, mask in (("dense", causal), ("sparse", sparse_mask)):
        for name, ps in (("multi", ps_multi), ("single", [p_single])):
            I = index_scores(family, idx, h, qr, pos_emb)
            L = kl_loss(I, mask, ps)
            gs = torch.autograd.grad(L, params)
            res[(stage, name)] = (L.detach(), {s: g.detach() for (s, _), g in zip(PARAMS, gs)})
    return res, I_c, sparse_mask


class _ScoresOf(torch.nn.Module):
    """Wraps an indexer so that torch.func.functional_call can substitute its parameters."""

    def __init__(self, family, idx):
        super().__init__()
        self.family, self.idx = family, idx

    def forward(self, h, qr, pos_emb):
        return index_scores(self.family, self.idx, h, qr, pos_emb)


def run_gradcheck(family, idx32, h, qr, pos_emb, ps, mask_sparse):
    """gradcheck (float64 copy of the indexer, fixed selection) of the multi losses w.r.t. its 5 tensors."""
    wrap = _ScoresOf(family, copy.deepcopy(idx32).double())
    h64, qr64 = h.double(), qr.double()
    pe64 = tuple(x.double() for x in pos_emb)
    ps64 = [p.double() for p in ps]
    T = h.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    names = ["idx." + full for _, full in PARAMS]
    base = dict(wrap.named_parameters())
    results = {}
    for stage, mask in (("dense", causal), ("sparse", mask_sparse)):
        def f(*tensors, mask=mask):
            I = torch.func.functional_call(wrap, dict(zip(names, tensors)), (h64, qr64, pe64))
            return kl_loss(I, mask, ps64)
        inputs = tuple(base[n].detach().clone().requires_grad_(True) for n in names)
        ok = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-5, fast_mode=False)
        L = f(*inputs)
        g64 = torch.autograd.grad(L, inputs)
        results[stage] = (ok, {s: g for (s, _), g in zip(PARAMS, g64)}, L.item())
    return results


# ----------------------------------------------------------------------------------------------
# saving


def save_sorted(tensors, path, metadata):
    save_file(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":")).encode()
        assert len(new) <= n
        f.seek(8)
        f.write(new + b" " * (n - len(new)))


def reread_check(path, plan, k):
    """Independent recomputation of every stored loss from the file's per-head p.{j} and index_scores.{l}."""
    with safe_open(path, "pt") as f:
        t = {key: f.get_tensor(key) for key in f.keys()}
    worst = 0.0
    for l, J in groups_of(plan).items():
        I = t[f"index_scores.{l}"].double()
        T = I.shape[0]
        for stage in ("dense", "sparse"):
            for ln, JJ in (("multi", J), ("single", [l])):
                total = 0.0
                for r in range(T):
                    row = I[r, : r + 1]
                    sel = list(range(r + 1)) if stage == "dense" else row.topk(min(k, r + 1)).indices.tolist()
                    logq = torch.log_softmax(row[sel], dim=0)
                    pbar = torch.zeros(len(sel), dtype=torch.float64)
                    for j in JJ:
                        pj = t[f"p.{j}"].double()[:, r, sel]  # [H, |sel|]
                        pbar += (pj / pj.sum(-1, keepdim=True)).mean(0) / len(JJ)
                    total += sum(0.0 if pb == 0 else pb * (torch.log(pb) - lq)
                                 for pb, lq in zip(pbar, logq)).item()
                ref = total / T
                got = t[f"loss.{stage}.{ln}.{l}"].item()
                worst = max(worst, abs(got - ref) / abs(ref))
    return worst


def build(spec, out_dir):
    name, plan, d = spec["name"], spec["plan"], spec["dir"]
    model = load_model(d)
    cfg = model.config
    family = cfg.model_type
    nl = cfg.num_hidden_layers
    assert len(plan) == nl, (plan, nl)
    with open(os.path.join(d, "ids.txt")) as f:
        ids = torch.tensor([int(x) for x in f.read().split()], dtype=torch.long)
    T = ids.shape[0]
    k = min(cfg.index_topk, T)
    groups = groups_of(plan)
    print(f"{name}: {family}, {nl} layers, T {T}, k {k}, plan {plan}, groups "
          + ", ".join(f"{l}:{g}" for l, g in groups.items()))

    # ids: ids.txt unless its top-k boundary is a near-tie on some layer; then seeded random ids
    ids_source, ids_seed, tried = f"{d}/ids.txt", None, []
    for attempt in range(MAX_SEEDS + 1):
        if attempt > 0:
            ids_seed = spec["ids_seed"] + attempt - 1
            ids = torch.randint(0, cfg.vocab_size, (T,), generator=torch.Generator().manual_seed(ids_seed))
            ids_source = f"torch.randint(0, {cfg.vocab_size}, ({T},), generator=manual_seed({ids_seed}))"
        cap = teacher_forward(model, ids)
        gaps = boundary_gaps(family, model, cap, T, k)
        bad = {l: g for l, g in gaps.items() if g[0] <= 1.0}
        tried.append((ids_seed, min(g[0] for g in gaps.values())))
        label = "ids.txt" if ids_seed is None else f"ids seed {ids_seed}"
        print(f"  {label}: min gap/threshold over all layers {tried[-1][1]:.3g}"
              + ("" if not bad else "  NEAR-TIE " + ", ".join(
                  f"layer {l} row t={g[1]} (k-th {g[2]:.6g}, (k+1)-th {g[3]:.6g})" for l, g in bad.items())))
        if not bad:
            break
    else:
        raise SystemExit(f"{name}: no ids without a top-k near-tie in {MAX_SEEDS} seeds")
    expected = {}
    if ids_seed is None:  # the golden expected.FFFFFF file was made on these ids: cross-check against it
        with safe_open(os.path.join(d, "expected." + "F" * nl + ".safetensors"), "pt") as f:
            for key in f.keys():
                expected[key] = f.get_tensor(key)
        assert torch.equal(expected["input_ids"].long(), ids)

    out = {"input_ids": ids.to(torch.int32)}
    P, QR = {}, {}
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(nl):
        attn = model.model.layers[l].self_attn
        c = cap[l]
        p, p_heads, qr, ew, eo = dense_p_and_check(family, attn, c, T, k)
        assert torch.allclose(p.sum(-1), torch.ones(T), atol=1e-5)
        if expected:
            assert torch.equal(c["topk"].to(torch.int32), expected[f"topk.{l}"][None]), f"layer {l} topk != golden"
        P[l], QR[l] = p_heads, qr
        out[f"p.{l}"] = p_heads
        out[f"h.{l}"] = c["h"][0].contiguous()
        print(f"  layer {l}: sparse-attention replay max err weights {ew:.2e}, output {eo:.2e}")

    worst_gap = float("inf")
    grads_f32 = {}
    for l, J in groups.items():
        attn = model.model.layers[l].self_attn
        idx = attn.indexer
        for p_ in idx.parameters():
            p_.requires_grad_(True)
        h, qr, pe = cap[l]["h"], QR[l], cap[l]["pos_emb"]
        # scores vs the module's own selection and the golden file
        with torch.no_grad():
            I_raw = index_scores(family, idx, h, qr, pe)
            ref = (I_raw[None] + cap[l]["idx_mask"]).topk(k, dim=-1).indices.to(torch.int32)
            assert torch.equal(ref, cap[l]["topk"]), f"layer {l}: replica top-k != module"
        I_c = I_raw.masked_fill(~causal, float("-inf"))
        err_gold = float("nan")
        if expected:
            gold = expected[f"index_scores.{l}"]
            assert torch.equal(torch.isinf(gold), torch.isinf(I_c))
            err_gold = (I_c[causal] - gold[causal]).abs().max().item()
            assert err_gold <= 1e-6 * (1 + gold[causal].abs().max().item()), err_gold
        mask_s, gap = selection_mask(I_c, k)
        worst_gap = min(worst_gap, gap)
        assert gap > 1.0, f"{name} layer {l}: top-k boundary near-tie (gap/threshold {gap:.3g}); ids.txt unusable"
        # the sparse mask equals the module's selection restricted to s <= t
        sel = torch.zeros(T, T, dtype=torch.bool).scatter(-1, cap[l]["topk"][0].long(), True) & causal
        assert torch.equal(sel, mask_s), f"layer {l}: K_t != module selection"

        res, _, _ = losses_and_grads(family, idx, h, qr, pe, [P[j] for j in J], P[l], k, mask_s)
        out[f"index_scores.{l}"] = I_c.contiguous()
        for (stage, ln), (L, gs) in res.items():
            out[f"loss.{stage}.{ln}.{l}"] = L.reshape(1).float()
            for s, g in gs.items():
                out[f"grad.{stage}.{ln}.{l}.{s}"] = g.float().contiguous()
            grads_f32[(stage, ln, l)] = gs
        for (s, full) in PARAMS:
            assert tuple(dict(idx.named_parameters())[full].shape) == tuple(res[("dense", "multi")][1][s].shape)
        # m = 0 self-check: multi over J = {l} is single, bit for bit
        res0, _, _ = losses_and_grads(family, idx, h, qr, pe, [P[l]], P[l], k, mask_s)
        for stage in ("dense", "sparse"):
            Lm, gm = res0[(stage, "multi")]
            Ls, gsn = res0[(stage, "single")]
            assert torch.equal(Lm, Ls) and all(torch.equal(gm[s], gsn[s]) for s in gm), (l, stage)
            assert torch.equal(Ls, res[(stage, "single")][0])
            if len(J) == 1:
                assert torch.equal(res[(stage, "multi")][0], res[(stage, "single")][0])
                assert all(torch.equal(res[(stage, "multi")][1][s], res[(stage, "single")][1][s]) for s in gm)
        msg = "  F layer %d J=%s: " % (l, J) + "  ".join(
            f"{st}.{ln} {res[(st, ln)][0].item():.6f}" for st in ("dense", "sparse") for ln in ("multi", "single"))
        print(msg + f"  (golden score err {err_gold:.1e}, gap/threshold min {gap:.3g})")

        if l == spec["gradcheck_layer"]:
            gc = run_gradcheck(family, idx, h, qr, pe, [P[j] for j in J], mask_s)
            for stage, (ok, g64, L64) in gc.items():
                rel = max(((grads_f32[(stage, "multi", l)][s].double() - g64[s]).abs().max()
                           / g64[s].abs().max()).item() for s in g64)
                dl = abs(res[(stage, "multi")][0].item() - L64) / abs(L64)
                print(f"  gradcheck f64 layer {l} {stage}.multi (J={J}): {ok}; f32 vs f64 grad max rel err "
                      f"{rel:.2e}, loss rel err {dl:.2e}")
                assert ok and rel < 1e-3
            spec["_gradcheck"] = (l, J, {st: gc[st][0] for st in gc})
        for p_ in idx.parameters():
            p_.requires_grad_(False)

    meta = {"model": name, "family": family, "plan": plan,
            "groups": ";".join(f"{l}:{','.join(map(str, J))}" for l, J in groups.items()),
            "T": str(T), "k": str(k), "torch": torch.__version__, "transformers": transformers.__version__,
            "ids_source": ids_source, "ids_seed": "none" if ids_seed is None else str(ids_seed),
            "ids_tried": " ".join("ids.txt" if sd is None else str(sd) for sd, _ in tried)}
    path = os.path.join(out_dir, f"{name}.safetensors")
    save_sorted({kk: v.contiguous() for kk, v in out.items()}, path, meta)
    size = os.path.getsize(path)
    err = reread_check(path, plan, k)
    print(f"  re-read check (losses recomputed row by row in float64 from p.* and index_scores.*): "
          f"max rel err {err:.2e}")
    assert err < 1e-5
    print(f"  wrote {path}: {len(out)} tensors, {size} bytes; min gap/threshold {worst_gap:.3g}")
    return path, size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  python {sys.version.split()[0]}")
    os.makedirs(args.out, exist_ok=True)
    for spec in MODELS:
        build(spec, args.out)


if __name__ == "__main__":
    main()
