"""A compact PyTorch implementation of the `glm_moe_dsa` architecture for training and evaluation.

Parameter names and shapes are exactly those of transformers' GlmMoeDsaForCausalLM (5.17), so a
state_dict moves between the two unchanged, except that a checkpoint on disk stores routed experts one
by one (`mlp.experts.{e}.{gate,up,down}_proj.weight`, as save_pretrained writes them) where both
in-memory models pack them (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]).

The arithmetic follows modeling_glm_moe_dsa.py:
  MLA: q = q_b(RMSNorm_1e-6(q_a(x))), [nope | rope] per head; kv_a(x) -> [latent | k_rope];
       k/v = kv_b(RMSNorm_1e-6(latent)); interleaved RoPE on the LAST qk_rope_head_dim dims (the rotated
       halves come out de-interleaved, identically for q and k); scale qk_head_dim^-0.5.
  Indexer: q_I = wq_b(q_resid) [T, Hi, Di]; k_I = LayerNorm_1e-6(wk(x)) (with bias); interleaved RoPE on
       the FIRST qk_rope_head_dim dims; I[t,s] = sum_h w[t,h] ReLU(q_I[t,h].k_I[s]) Di^-0.5,
       w = weights_proj(x) Hi^-0.5; causal; top-k (k = index_topk).
  MoE: sigmoid router in fp32, choice by scores + e_score_correction_bias (n_group = topk_group = 1),
       weights = un-biased scores of the chosen experts, renormalised, times routed_scaling_factor;
       plus one shared expert; the first `first_k_dense_replace` layers use a dense MLP.
Routed experts are computed densely for every token (all E experts, weight 0 where not chosen): exact,
and fast for E <= 16 at this size.

Attention modes of `forward`:
  "dense"   causal attention over all past tokens (indexers unused)
  "sparse"  each F layer runs its indexer and attends to its top-k; an S layer reuses the top-k of the
            nearest preceding F layer (`plan`: list of booleans, True = F; None = all F)
Training hooks (`indexer_loss`): "dense_kl" (warm-up: KL(p || softmax(I)) over all causal keys, where p
is the head-mean attention of the dense model) and "sparse_kl" (sparse stage: KL over the selected set,
p = head-mean of the sparse attention); the indexer sees detached inputs, and each layer's KL is
back-propagated on the spot when `kl_backward` is set (its graph is separate from the LM loss).
"""
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768
    moe_intermediate_size: int = 128
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    q_lora_rank: int = 128
    kv_lora_rank: int = 128
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    routed_scaling_factor: float = 2.0
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1
    index_n_heads: int = 4
    index_head_dim: int = 64
    index_topk: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 1

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def hf_dict(self, indexer_types=None):
        """kwargs for transformers.GlmMoeDsaConfig."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rope_theta",)}
        d.update(model_type="glm_moe_dsa", architectures=["GlmMoeDsaForCausalLM"], num_key_value_heads=self.num_attention_heads,
                 n_group=1, topk_group=1, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta}, use_cache=True,
                 mlp_layer_types=["dense" if i < self.first_k_dense_replace else "sparse"
                                  for i in range(self.num_hidden_layers)],
                 indexer_types=indexer_types or ["full"] * self.num_hidden_layers)
        return d


def tiny_config(**kw):
    c = ModelConfig(vocab_size=8192, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                    num_hidden_layers=3, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
                    qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=4, num_experts_per_tok=2, index_n_heads=2,
                    index_head_dim=32, index_topk=16, max_position_embeddings=256)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


def rope_cos_sin(cfg, T, device):
    dim = cfg.qk_rope_head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32, device=device), inv)  # [T, dim/2]
    return freqs.cos(), freqs.sin()


def rope_interleave(x, cos, sin):
    """x [..., T, d] (T at dim -2); cos/sin [T, d/2]. Same arithmetic and output layout as transformers'
    apply_rotary_pos_emb_interleave: pairs (x0,x1),(x2,x3)... rotated, output [evens' | odds']."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def causal_mask(T, device):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


# ----------------------------------------------------------------------------------------------
class Indexer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.head_dim, self.rope = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)

    def scores(self, x, q_resid, cos, sin):
        """Index scores I [B, T, T] in fp32, not yet masked."""
        B, T, _ = x.shape
        q = self.wq_b(q_resid).view(B, T, self.n_heads, self.head_dim)
        k = self.k_norm(self.wk(x))  # [B, T, D]
        r = self.rope
        # rope on the first r dims; [B, T, H, r] -> put T at dim -2 for rope_interleave
        q_rot = rope_interleave(q[..., :r].transpose(1, 2), cos, sin).transpose(1, 2)
        k_rot = rope_interleave(k[..., :r], cos, sin)
        q = torch.cat([q_rot, q[..., r:]], dim=-1)
        k = torch.cat([k_rot, k[..., r:]], dim=-1)
        w = self.weights_proj(x.to(self.weights_proj.weight.dtype)).float() * (self.n_heads ** -0.5)  # [B,T,H]
        if q.dtype == torch.float32 and k.dtype == torch.float32:  # evaluation: transformers' arithmetic
            s = F.relu(torch.einsum("bthd,bsd->bhts", q, k) * (self.head_dim ** -0.5))
            return torch.einsum("bth,bhts->bts", w, s)
        # training under bf16 autocast: keep the [B, Hi, T, T] intermediate in bf16
        s = F.relu(torch.einsum("bthd,bsd->bhts", q * (self.head_dim ** -0.5), k))
        return torch.einsum("bth,bhts->bts", w.to(s.dtype), s).float()


class Attention(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        H = cfg.num_attention_heads
        self.q_a_proj = nn.Linear(cfg.hidden_size, cfg.q_lora_rank, bias=False)
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, 1e-6)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * cfg.v_head_dim, cfg.hidden_size, bias=False)
        self.indexer = Indexer(cfg)
        self.scaling = cfg.qk_head_dim ** -0.5

    def qkv(self, x, cos, sin):
        cfg = self.cfg
        B, T, _ = x.shape
        H = cfg.num_attention_heads
        q_resid = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(q_resid).view(B, T, H, cfg.qk_head_dim).transpose(1, 2)
        q_pass, q_rot = q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
        ckv = self.kv_a_proj_with_mqa(x)
        kv_pass, k_rot = ckv.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        kv_pass = self.kv_a_layernorm(kv_pass)
        q_rot = rope_interleave(q_rot, cos, sin)
        k_rot = rope_interleave(k_rot.view(B, 1, T, cfg.qk_rope_head_dim), cos, sin)
        q = torch.cat([q_pass, q_rot], dim=-1)
        kv = self.kv_b_proj(kv_pass).view(B, T, H, cfg.qk_nope_head_dim + cfg.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rot.expand(B, H, T, cfg.qk_rope_head_dim)], dim=-1)
        return q, k, v, q_resid

    def head_mean_probs(self, q, k, allowed):
        """Head-mean attention probabilities [B, T, T] (fp32), no grad; allowed: bool [B or 1, T, T]."""
        with torch.no_grad():
            H = q.shape[1]
            p = None
            for h in range(H):
                s = torch.matmul(q[:, h], k[:, h].transpose(-1, -2)).float() * self.scaling
                s = s.masked_fill(~allowed, float("-inf")).softmax(-1)
                p = s if p is None else p.add_(s)
            return p.div_(H)

    def forward(self, x, cos, sin, st):
        """st: per-forward state dict (mode, plan, prev_topk, indexer_loss, kl_backward, results)."""
        B, T, _ = x.shape
        cfg = self.cfg
        q, k, v, q_resid = self.qkv(x, cos, sin)
        mode = st["mode"]
        is_full = st["plan"] is None or st["plan"][self.layer_idx]
        topk = None
        kl = None
        if mode == "dense":
            if st.get("indexer_loss") == "dense_kl":
                causal = causal_mask(T, x.device)
                p = self.head_mean_probs(q.detach(), k.detach(), causal[None])
                I = self.indexer.scores(x.detach(), q_resid.detach(), cos, sin)
                logq = I.masked_fill(~causal, float("-inf")).log_softmax(-1)
                kl = kl_div(p, logq)
            elif st.get("want_topk"):
                causal = causal_mask(T, x.device)
                with torch.no_grad():
                    I = self.indexer.scores(x, q_resid, cos, sin).masked_fill(~causal, float("-inf"))
                    topk = I.topk(min(cfg.index_topk, T), dim=-1).indices
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        else:  # sparse
            causal = causal_mask(T, x.device)
            I = None
            if is_full:
                with torch.no_grad():
                    Im = self.indexer.scores(x, q_resid, cos, sin).masked_fill(~causal, float("-inf"))
                topk = Im.topk(min(cfg.index_topk, T), dim=-1).indices  # [B, T, k]
                if st.get("indexer_loss") == "sparse_kl":
                    # the KL is taken on the first kl_rows rows only (the selection uses every row)
                    R = min(B, st.get("kl_rows") or B)
                    I = self.indexer.scores(x[:R].detach(), q_resid[:R].detach(), cos, sin)
                    Im_r = I.masked_fill(~causal, float("-inf"))
                sel = torch.zeros(B, T, T, dtype=torch.bool, device=x.device).scatter_(-1, topk, True)
                allowed = sel & causal
                st["prev_topk"], st["prev_allowed"] = topk, allowed
            else:
                topk, allowed = st["prev_topk"], st.get("prev_allowed")
                if topk is None:
                    raise ValueError("a shared layer needs a preceding full layer")
            o = sparse_attention(q, k, v, allowed, self.scaling, st)
            if I is not None:
                p = self.head_mean_probs(q[:R].detach(), k[:R].detach(), allowed[:R])
                p_sel = p.gather(-1, topk[:R])                              # [R, T, k]
                valid = allowed[:R].gather(-1, topk[:R])
                logq = Im_r.gather(-1, topk[:R]).masked_fill(~valid, float("-inf")).log_softmax(-1)
                kl = kl_div(p_sel, logq)
        if kl is not None:
            st.setdefault("kl", []).append(kl.detach())
            if st.get("kl_backward"):
                (kl * st.get("kl_scale", 1.0)).backward()
        if st.get("collect_topk") is not None:
            st["collect_topk"].append(topk)
        o = o.transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(o)


def kl_div(p, logq):
    """sum_s p (log p - log q), averaged over queries; p = 0 entries (and their -inf log q) contribute 0."""
    logq = torch.where(p > 0, logq, torch.zeros_like(logq))
    return (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum(-1).mean()


def sparse_attention(q, k, v, allowed, scale, st):
    """Attention restricted to `allowed` [B, T, T] (bool). SDPA with a boolean mask; falls back to a float
    mask, then to plain math, if a backend refuses (remembered in st['sdpa_fallback'])."""
    how = st.get("sdpa_mode", "bool")
    if how == "bool":
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale)
        except RuntimeError:
            st["sdpa_mode"] = how = "float"
    if how == "float":
        try:
            m = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None], scale=scale)
        except RuntimeError:
            st["sdpa_mode"] = "math"
    s = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    s = s.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).to(v.dtype)
    return torch.matmul(s, v)


class MLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x):
        """x [N, H] -> dense routing weights [N, E] (fp32, zero where not chosen), chosen indices [N, k]."""
        cfg = self.cfg
        with torch.autocast(device_type=x.device.type, enabled=False):  # routing in fp32, also in training
            logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        choice = scores.detach() + self.e_score_correction_bias
        idx = choice.topk(cfg.num_experts_per_tok, dim=-1, sorted=False).indices
        w = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * cfg.routed_scaling_factor
        dense = torch.zeros_like(scores).scatter(1, idx, w)
        return dense, idx


class Experts(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E, H, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))

    def forward(self, x, wdense):
        """x [N, H]; wdense [N, E] -> [N, H]; every expert computed for every token (exact)."""
        E, I2, H = self.gate_up_proj.shape
        I = I2 // 2
        gu = F.linear(x, self.gate_up_proj.reshape(E * I2, H)).view(-1, E, I2)
        act = F.silu(gu[..., :I]) * gu[..., I:]                                # [N, E, I]
        act = act * wdense.to(act.dtype)[..., None]
        down = self.down_proj.permute(0, 2, 1).reshape(E * I, H)              # [E*I, H]
        return act.reshape(-1, E * I) @ down.to(act.dtype)


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.experts = Experts(cfg)
        self.gate = Router(cfg)
        self.shared_experts = MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x, st=None):
        shp = x.shape
        flat = x.reshape(-1, shp[-1])
        wdense, idx = self.gate(flat)
        if st is not None and st.get("expert_load") is not None:
            st["expert_load"].append(torch.bincount(idx.flatten(), minlength=self.cfg.n_routed_experts))
        y = self.experts(flat, wdense) + self.shared_experts(flat)
        return y.view(shp)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.self_attn = Attention(cfg, i)
        self.is_moe = i >= cfg.first_k_dense_replace
        self.mlp = MoE(cfg) if self.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h, cos, sin, st):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, st)
        x = self.post_attention_layernorm(h)
        return h + (self.mlp(x, st) if self.is_moe else self.mlp(x))


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class GlmMoeDsaLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = self.cfg.initializer_range
        out_std = std / math.sqrt(2 * self.cfg.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norms (ones), LayerNorm bias (zeros) keep their defaults
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")) else std
            nn.init.normal_(p, mean=0.0, std=s)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def indexer_parameters(self):
        return [p for n, p in self.named_parameters() if ".indexer." in n]

    def main_parameters(self):
        return [p for n, p in self.named_parameters() if ".indexer." not in n]

    def hidden(self, ids, mode="dense", plan=None, st=None):
        st = {} if st is None else st
        st.update(mode=mode, plan=plan, prev_topk=None, prev_allowed=None)
        T = ids.shape[1]
        cos, sin = rope_cos_sin(self.cfg, T, ids.device)
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h, cos, sin, st)
        return self.model.norm(h)

    def forward(self, ids, mode="dense", plan=None, st=None):
        return self.lm_head(self.hidden(ids, mode, plan, st))


def parameter_counts(model):
    n_all = sum(p.numel() for p in model.parameters())
    n_idx = sum(p.numel() for p in model.indexer_parameters())
    n_emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    cfg = model.cfg
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    n_exp = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    active = n_all - n_exp + n_exp * k // E
    return {"total": n_all, "indexer": n_idx, "embedding_and_head": n_emb, "routed_experts": n_exp,
            "active_per_token": active}
