#!/usr/bin/env python3
"""Build tiny random DSA checkpoints in the shipped block-FP8 layout and record golden outputs.

Usage:
    python3 scripts/make_fp8_goldens.py --out tests/data/golden_fp8

Same machinery as scripts/make_goldens.py (imported from it, unchanged: weight draws, the
deepseek_v32 sharing patch, capture, conditioning, the numpy float64 forward, the expected-file
format), everything on the CPU in float32 with fixed seeds, byte-identical from run to run. What is
new is the storage: the checkpoints look like DeepSeek-V3.2 / GLM-5-FP8 as they ship.

  glm_fp8  glm_moe_dsa   3 layers (D M M) + 1 MTP layer, hidden 160, 4 experts; quantization_config
                         {quant_method fp8, fmt e4m3, activation_scheme dynamic, weight_block_size
                         [128, 128]} (no scale_fmt: scales are plain amax / 448); plan keys as GLM-5.2
                         ships them (explicit `indexer_types` F S F, plus the consistent
                         index_topk_freq 2 / index_skip_topk_offset 1 and index_topk_pattern null):
                         layer 1's indexer tensors are ABSENT; k_norm BF16; a wrong `head_dim`
                         (= qk_nope_head_dim, as GLM-5.2 ships it); 2 shards + index.json, the split
                         falls between one FP8 weight and its scale.
  dsv_fp8  deepseek_v32  3 layers (D M M) + 1 MTP layer, hidden 96, kv_lora 144, 6 experts in 3
                         groups; the same quantization_config plus scale_fmt "ue8m0" (every scale a
                         power of two); no plan key (all F, as DeepSeek ships it); every layer's
                         indexer present; k_norm F32; YaRN factor 40; one model.safetensors.

Storage (both): F8_E4M3 [out, in] + F32 `<name>_scale_inv` [ceil(out/128), ceil(in/128)] for every MLA
projection (q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj), the dense MLPs, the shared
experts, every routed expert stored PER EXPERT (`mlp.experts.{e}.{gate,up,down}_proj.weight`), and the
indexer's wq_b and wk. BF16: embeddings, lm_head, every norm, the router `mlp.gate.weight`, the
indexer's weights_proj (and k_norm in glm_fp8), the MTP layer's eh_proj. F32:
`mlp.gate.e_score_correction_bias` (and k_norm in dsv_fp8).

Quantization: weights are drawn exactly as make_goldens.py draws them (per-tensor seeds, same
scales), in f32; each 128 x 128 block of an FP8 matrix is then multiplied by 2^u, u ~ U(-1.5, 1.5) per
block (`block_spread`), so the blocks of a matrix get clearly different scales. Edge blocks are
partial (only their real elements count); scale = amax(|block|) / 448 in f32, for ue8m0 rounded UP to
a power of two (frexp); stored e4m3 = (w / scale) clamped to +-448, rounded to nearest by torch's
float8_e4m3fn cast; scale_inv = scale. The reference model then gets exactly the dequantized values
float32(e4m3) * scale_inv, one f32 multiply per element (BF16 tensors: rounded to bf16 and back), so
f32 math on the stored tensors reproduces it bit for bit.

MTP layer (num_nextn_predict_layers 1, index num_hidden_layers): a full MoE decoder layer with its own
indexer (drawn from a transformers model with one more all-F sparse layer, then quantized like the
others), plus `enorm.weight`, `hnorm.weight` (BF16 [hidden]), `eh_proj.weight` (BF16 [hidden,
2*hidden], no scale, as both families ship it) and `shared_head.norm.weight` (BF16). dsv_fp8 also
carries `embed_tokens.weight` and `shared_head.head.weight` in that layer (BF16 copies of the main
embedding and lm_head, as DeepSeek-V3.x ships them); GLM-5.x ships neither, nor does glm_fp8.
transformers 5.17 does not build the MTP layer; it is only present in the files.

Expected outputs (expected.<PLAN>.safetensors, the tests/data/golden format: input_ids, logits,
topk.{l}, index_scores.{l} of F layers, sorted string metadata) for two plans per model, computed by
transformers (eager, f32) on the dequantized weights:
  glm_fp8: FSF (the config's) and FSS (the only other plan whose F layers all have indexer tensors);
  dsv_fp8: FFF (the config's: all F) and FSF (through make_goldens.patch_dsv32_sharing).
Conditioning as in make_goldens.py (index-score gap 1e-4 relative, router margin 1e-4).

Checks (all asserted): every stored tensor has the intended dtype, FP8 ones have their F32 scale of
the right shape, finite and > 0 (powers of two for ue8m0), nothing else has a scale; numpy's
dequantization (f32 multiply) of the files equals the reference parameters bit for bit (per-expert
tensors against the slices of transformers' packed experts); the shard index maps every tensor once;
the glm S layer has no indexer tensor and the MTP layers are complete; AutoConfig re-loads each
config.json; a transformers model built from it and loaded with the dequantized files reproduces the
logits (max abs diff 0) and top-k of every plan; make_goldens.np_forward (numpy float64, reading
config.json and, through the FP8-aware loader below, the weight files) reproduces the selected sets
exactly and logits / index scores to 1e-4 relative; the same forward with a wrong block-scale rule
(block [0, 0]'s scale everywhere; transformers' even split, below) misses the logits by > 1e-2.

Note: transformers' own FP8 loading (FineGrainedFP8 with dequantize=True, the CPU default) is NOT used:
its Fp8Dequantize derives the block size as rows // scale_rows, which is wrong when an edge block is
partial (e.g. 160 rows with a 2-row grid gives 80-row blocks), so it would silently mis-scale these
checkpoints. The script dequantizes itself.

Bad checkpoints (bad_*/: config.json + model.safetensors, no expected outputs), each one defect away
from the valid tiny checkpoint ok_tiny/ (written too, as the control): see BAD below and README.md.
`problems()` (the rules a loader must enforce) finds nothing in ok_tiny, glm_fp8 and dsv_fp8, and
exactly the one BAD name in each bad checkpoint (asserted).
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (sets f32, TF32 off, one thread; its behaviour is unchanged)

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig  # noqa: E402
from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config  # noqa: E402
from transformers.models.glm_moe_dsa.configuration_glm_moe_dsa import GlmMoeDsaConfig  # noqa: E402

BLOCK = 128
E4M3_MAX = 448.0

QUANT_GLM = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
QUANT_DSV = dict(QUANT_GLM, scale_fmt="ue8m0")

MODELS = [
    dict(
        name="glm_fp8", family="glm_moe_dsa", T=40, ids_seed=5000,
        plans=["FSF", "FSS"],  # the first is the config's plan
        quant=QUANT_GLM, k_norm="bfloat16", shards=2, mtp_copies=False,
        split_before="model.layers.1.mlp.experts.1.gate_proj.weight_scale_inv",
        config_extra={"index_topk_freq": 2, "index_skip_topk_offset": 1, "index_topk_pattern": None,
                      "scoring_func": "sigmoid", "topk_method": "noaux_tc"},
        head_dim_as_shipped=True,
        cfg=dict(vocab_size=64, hidden_size=160, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=2, q_lora_rank=48, kv_lora_rank=48, qk_nope_head_dim=40,
                 qk_rope_head_dim=16, v_head_dim=32, index_head_dim=24, index_n_heads=8, index_topk=16,
                 intermediate_size=96, moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2,
                 n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True,
                 routed_scaling_factor=2.5, hidden_act="silu", attention_bias=False,
                 max_position_embeddings=4096, rms_norm_eps=1e-5,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                 tie_word_embeddings=False),
    ),
    dict(
        name="dsv_fp8", family="deepseek_v32", T=40, ids_seed=6000,
        plans=["FFF", "FSF"],
        quant=QUANT_DSV, k_norm="float32", shards=1, mtp_copies=True,
        config_extra={"scoring_func": "sigmoid", "topk_method": "noaux_tc"}, head_dim_as_shipped=False,
        cfg=dict(vocab_size=64, hidden_size=96, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=2, q_lora_rank=64, kv_lora_rank=144, qk_nope_head_dim=32,
                 qk_rope_head_dim=16, v_head_dim=32, index_head_dim=24, index_n_heads=8, index_topk=16,
                 intermediate_size=160, moe_intermediate_size=16, n_routed_experts=6, num_experts_per_tok=2,
                 n_shared_experts=1, first_k_dense_replace=1, n_group=3, topk_group=2, norm_topk_prob=True,
                 routed_scaling_factor=2.5, hidden_act="silu", attention_bias=False,
                 max_position_embeddings=5120, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                                  "original_max_position_embeddings": 128, "beta_fast": 32.0,
                                  "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                 tie_word_embeddings=False),
    ),
]

# the valid tiny checkpoint the bad ones are derived from (one dense layer, every scale grid [1, 1])
TINY = dict(
    name="ok_tiny", family="glm_moe_dsa", quant=QUANT_GLM, k_norm="bfloat16",
    cfg=dict(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
             q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
             index_head_dim=16, index_n_heads=1, index_topk=4, intermediate_size=16, moe_intermediate_size=8,
             n_routed_experts=2, num_experts_per_tok=1, n_shared_experts=1, first_k_dense_replace=1,
             n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0, hidden_act="silu",
             attention_bias=False, max_position_embeddings=256, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False),
)

# bad checkpoint -> the tensor or key its error must name
BAD = {
    "bad_scale_shape": "model.layers.0.mlp.gate_proj.weight_scale_inv",
    "bad_missing_scale": "model.layers.0.mlp.down_proj.weight",
    "bad_scale_beside_bf16": "model.layers.0.self_attn.o_proj.weight",
    "bad_quant_method": "quantization_config.quant_method",
    "bad_fmt": "quantization_config.fmt",
    "bad_nan_scale": "model.layers.0.self_attn.q_b_proj.weight_scale_inv",
    "bad_inf_scale": "model.layers.0.mlp.up_proj.weight_scale_inv",
    "bad_block_size": "quantization_config.weight_block_size",
}

FP8_SUFFIXES = (
    "self_attn.q_a_proj.weight", "self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
    "self_attn.kv_b_proj.weight", "self_attn.o_proj.weight",
    "self_attn.indexer.wq_b.weight", "self_attn.indexer.wk.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",  # dense MLP
    "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight", "mlp.shared_experts.down_proj.weight",
)
# the only matrices (2-D tensors) that stay BF16
BF16_MATRICES = ("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight", "self_attn.indexer.weights_proj.weight",
                 "eh_proj.weight", "shared_head.head.weight")


# ----------------------------------------------------------------------------------------------
# quantization


def block_spread(model_name, name, shape):
    """Per-block multipliers 2^u, u ~ U(-1.5, 1.5), one per 128 x 128 block (seeded by the tensor name):
    without them every block of a matrix would get nearly the same scale (all equal under ue8m0), and
    a loader applying the wrong block's scale would still pass."""
    rows, cols = shape
    g = torch.Generator().manual_seed(zlib.crc32(f"{model_name}/{name}/blocks".encode()))
    u = torch.rand((math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)), generator=g, dtype=torch.float32) * 3 - 1.5
    return torch.exp2(u).repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols].contiguous()


def quantize_fp8_blocks(w, ue8m0):
    """w: f32 [out, in] -> (e4m3 [out, in], scale_inv f32 [ceil(out/128), ceil(in/128)], dequantized f32)."""
    assert w.dtype == torch.float32 and w.dim() == 2
    rows, cols = w.shape
    R, C = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    padded = torch.zeros(R * BLOCK, C * BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = w
    amax = padded.abs().reshape(R, BLOCK, C, BLOCK).amax(dim=(1, 3))  # zeros of the pad never win
    assert bool((amax > 0).all())
    scale = amax / E4M3_MAX
    if ue8m0:  # round up to a power of two: m in [0.5, 1); m == 0.5 is already one
        m, e = torch.frexp(scale)
        scale = torch.ldexp(torch.ones_like(scale), torch.where(m == 0.5, e - 1, e))
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
    q = (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    deq = q.to(torch.float32) * full
    return q.contiguous(), scale.contiguous(), deq


def is_fp8_name(name):
    """Checkpoint (per-expert) tensor name -> stored as FP8?"""
    if ".mlp.experts." in name:
        return name.endswith("_proj.weight")
    return name.endswith(FP8_SUFFIXES)


def storage_dtype(spec, name):
    if is_fp8_name(name):
        return torch.float8_e4m3fn
    if name.endswith("e_score_correction_bias"):
        return torch.float32
    if ".indexer.k_norm." in name:
        return mg.DTYPES[spec["k_norm"]]
    return torch.bfloat16


# ----------------------------------------------------------------------------------------------
# model construction


def make_config(spec, plan, extra_layers=0):
    """transformers config for `plan` (+ extra all-F sparse layers at the end: the MTP layer's shapes)."""
    kw = dict(spec["cfg"])
    kw["num_hidden_layers"] += extra_layers
    plan = plan + "F" * extra_layers
    if spec["family"] == "glm_moe_dsa":
        kw["indexer_types"] = mg.plan_to_types(plan)
        cfg = GlmMoeDsaConfig(**kw)
    else:
        cfg = DeepseekV32Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def build_storage(spec, with_mtp=True):
    """Draw every tensor (main layers, the MTP layer) and quantize it as stored.

    Returns (ref_sd, ckpt): ref_sd = f32 state dict of the (N+1)-layer all-F transformers model holding
    the values the checkpoint decodes to; ckpt = {name: tensor as stored} in the shipped layout (per
    expert, FP8 + scale_inv, BF16 / F32), before any indexer is dropped."""
    N = spec["cfg"]["num_hidden_layers"]
    extra = 1 if with_mtp else 0
    cfg = make_config(spec, "F" * N, extra_layers=extra)
    torch.manual_seed(0)
    model = mg.model_class(spec["family"])(cfg).eval()
    ue8m0 = spec["quant"].get("scale_fmt") == "ue8m0"
    I = spec["cfg"]["moe_intermediate_size"]
    ckpt, ref_sd = {}, {}

    def put_fp8(name, w):
        q, s, deq = quantize_fp8_blocks(w * block_spread(spec["name"], name, tuple(w.shape)), ue8m0)
        ckpt[name] = q
        ckpt[name + "_scale_inv"] = s
        return deq

    def put_plain(name, w):
        dt = storage_dtype(spec, name)
        ckpt[name] = w.to(dt).contiguous()
        return ckpt[name].to(torch.float32)

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("inv_freq"):
                continue
            t = mg.init_tensor(spec["name"], name, tuple(p.shape))
            if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H] -> per expert gate [I, H], up [I, H]
                pre = name[: -len("gate_up_proj")]
                for e in range(t.shape[0]):
                    t[e, :I] = put_fp8(f"{pre}{e}.gate_proj.weight", t[e, :I].clone())
                    t[e, I:] = put_fp8(f"{pre}{e}.up_proj.weight", t[e, I:].clone())
            elif name.endswith("mlp.experts.down_proj"):  # [E, H, I] -> per expert down [H, I]
                pre = name[: -len("down_proj")]
                for e in range(t.shape[0]):
                    t[e] = put_fp8(f"{pre}{e}.down_proj.weight", t[e].clone())
            elif is_fp8_name(name):
                t = put_fp8(name, t)
            else:
                t = put_plain(name, t)
            p.copy_(t)
            ref_sd[name] = p.detach().clone()
    if with_mtp:  # the MTP glue: not a transformers module, only present in the files
        m = f"model.layers.{N}."
        H = spec["cfg"]["hidden_size"]
        for nm, shape in (("enorm.weight", (H,)), ("hnorm.weight", (H,)), ("eh_proj.weight", (H, 2 * H)),
                          ("shared_head.norm.weight", (H,))):
            put_plain(m + nm, mg.init_tensor(spec["name"], m + nm, shape))
        if spec["mtp_copies"]:  # DeepSeek-V3.x ships copies of the embedding and the head in the MTP layer
            ckpt[m + "embed_tokens.weight"] = ckpt["model.embed_tokens.weight"].clone()
            ckpt[m + "shared_head.head.weight"] = ckpt["lm_head.weight"].clone()
    return ref_sd, ckpt


def build_plan_model(spec, plan, ref_sd):
    N = spec["cfg"]["num_hidden_layers"]
    cfg = make_config(spec, plan)
    torch.manual_seed(0)
    model = mg.model_class(spec["family"])(cfg).eval()
    res = model.load_state_dict(ref_sd, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("inv_freq")]
    assert not missing, missing
    for k in res.unexpected_keys:  # the MTP layer, and (glm) the S layers' indexers
        layer = int(k.split(".")[2])
        assert layer == N or (".self_attn.indexer." in k and plan[layer] == "S"), k
    if spec["family"] == "deepseek_v32":
        mg.patch_dsv32_sharing(model, plan)
    return model


def config_plan(spec):
    return spec["plans"][0]


# ----------------------------------------------------------------------------------------------
# saving


def sort_key(name):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def write_config(spec, outdir, plan):
    """config.json: what save_pretrained writes for the N-layer model, plus the shipped keys."""
    cfg = make_config(spec, plan)
    cfg.dtype = torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        cfg.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            j = json.load(f)
    j["architectures"] = [mg.model_class(spec["family"]).__name__]
    if spec["family"] != "glm_moe_dsa":
        j.pop("indexer_types", None)
    j["num_nextn_predict_layers"] = 1
    j["quantization_config"] = dict(spec["quant"])
    j.update(spec.get("config_extra", {}))
    if spec.get("head_dim_as_shipped"):  # GLM-5.2 ships head_dim = qk_nope_head_dim: wrong for MLA
        j["head_dim"] = spec["cfg"]["qk_nope_head_dim"]
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(j, f, indent=2, sort_keys=True)
        f.write("\n")


def write_weights(spec, ckpt, outdir):
    names = sorted(ckpt, key=sort_key)
    if spec.get("shards", 1) == 1:
        save_file({k: ckpt[k] for k in names}, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    assert spec["shards"] == 2
    cut = names.index(spec["split_before"])
    assert names[cut - 1] == spec["split_before"][: -len("_scale_inv")]  # weight in shard 1, its scale in 2
    parts = [names[:cut], names[cut:]]
    files, weight_map = [], {}
    for i, keys in enumerate(parts):
        fn = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: ckpt[k] for k in keys}, os.path.join(outdir, fn), metadata={"format": "pt"})
        files.append(fn)
        weight_map.update({k: fn for k in keys})
    total = sum(ckpt[k].numel() * ckpt[k].element_size() for k in names)
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")
    return files + ["model.safetensors.index.json"]


# ----------------------------------------------------------------------------------------------
# reading the files back (independent of the writer above)


def weight_files(outdir):
    idx = os.path.join(outdir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        return sorted(set(wm.values())), wm
    return ["model.safetensors"], None


def read_raw(outdir):
    files, wm = weight_files(outdir)
    raw = {}
    for fn in files:
        with safe_open(os.path.join(outdir, fn), "pt") as f:
            for key in f.keys():
                assert key not in raw, f"{key} stored twice"
                assert wm is None or wm.get(key) == fn, f"{key}: index says {wm.get(key)}, found in {fn}"
                raw[key] = f.get_tensor(key)
    if wm is not None:
        assert set(wm) == set(raw), set(wm) ^ set(raw)
    return raw


def expand_scales(sn, rows, cols, wrong=None):
    """The per-element multiplier of a [rows, cols] weight; `wrong` = a deliberately wrong rule (the
    sensitivity check): "first_block" (block [0, 0]'s scale everywhere) or "even_split" (transformers'
    rule: blocks of rows // grid_rows x cols // grid_cols where that divides, else the right rule)."""
    if wrong == "first_block":
        return np.full((rows, cols), sn[0, 0], dtype=np.float32)
    if wrong == "even_split" and rows % sn.shape[0] == 0 and cols % sn.shape[1] == 0:
        return np.repeat(np.repeat(sn, rows // sn.shape[0], 0), cols // sn.shape[1], 1)
    return np.repeat(np.repeat(sn, BLOCK, 0), BLOCK, 1)[:rows, :cols]


def np_dequant(raw, quant, wrong=None):
    """numpy: every FP8 weight times its block scale (f32 multiply), everything else widened to f32."""
    ue8m0 = quant.get("scale_fmt") == "ue8m0"
    out, n_fp8 = {}, 0
    for key, t in raw.items():
        if key.endswith("_scale_inv"):
            w = raw.get(key[: -len("_scale_inv")])
            assert w is not None and w.dtype == torch.float8_e4m3fn, f"{key}: scale without an FP8 weight"
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = raw.get(key + "_scale_inv")
            assert s is not None, f"{key}: FP8 without a scale"
            rows, cols = t.shape
            assert s.dtype == torch.float32 and tuple(s.shape) == (math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)), \
                (key, s.dtype, tuple(s.shape))
            sn = s.numpy()
            assert np.isfinite(sn).all() and (sn > 0).all(), key
            if ue8m0:
                assert (np.frexp(sn)[0] == 0.5).all(), f"{key}: a scale is not a power of two"
            out[key] = t.to(torch.float32).numpy() * expand_scales(sn, rows, cols, wrong)  # f32 * f32 -> f32
            n_fp8 += 1
        else:
            out[key] = t.to(torch.float32).numpy()
    return out, n_fp8


def check_files(spec, outdir, ref_sd):
    """Dtypes, scales, presence / absence, and the decoded values against the reference parameters."""
    N = spec["cfg"]["num_hidden_layers"]
    plan = config_plan(spec)
    raw = read_raw(outdir)
    for key, t in raw.items():
        if key.endswith("_scale_inv"):
            continue
        assert t.dtype == storage_dtype(spec, key), (key, t.dtype)
        if t.dim() == 2 and t.dtype != torch.float8_e4m3fn:  # independent of storage_dtype's rules
            assert t.dtype == torch.bfloat16 and key.endswith(BF16_MATRICES), key
    E, per_layer = spec["cfg"]["n_routed_experts"], []
    for l in range(N + 1):
        moe = l == N or make_config(spec, plan).mlp_layer_types[l] == "sparse"
        has_idx = l == N or plan[l] == "F" or spec["family"] != "glm_moe_dsa"
        per_layer.append(5 + 2 * has_idx + (3 * (E + spec["cfg"]["n_shared_experts"]) if moe else 3))
    n_expected_fp8 = sum(per_layer)
    deq, n_fp8 = np_dequant(raw, spec["quant"])
    assert n_fp8 == n_expected_fp8, (n_fp8, n_expected_fp8)
    I = spec["cfg"]["moe_intermediate_size"]
    for name, p in ref_sd.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if layer is not None and layer < N and ".self_attn.indexer." in name and plan[layer] == "S":
            assert not any(k.startswith(name.rsplit(".", 1)[0]) for k in raw), f"{name}: S-layer indexer stored"
            continue
        ref = p.numpy()
        if name.endswith("mlp.experts.gate_up_proj"):
            pre = name[: -len("gate_up_proj")]
            for e in range(ref.shape[0]):
                assert np.array_equal(deq[f"{pre}{e}.gate_proj.weight"], ref[e, :I]), (name, e)
                assert np.array_equal(deq[f"{pre}{e}.up_proj.weight"], ref[e, I:]), (name, e)
            assert pre + "gate_up_proj" not in raw
        elif name.endswith("mlp.experts.down_proj"):
            pre = name[: -len("down_proj")]
            for e in range(ref.shape[0]):
                assert np.array_equal(deq[f"{pre}{e}.down_proj.weight"], ref[e]), (name, e)
        else:
            assert np.array_equal(deq[name], ref), name
    m = f"model.layers.{N}."
    mtp = [m + s for s in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                           "self_attn.indexer.wq_b.weight", "self_attn.indexer.wk.weight",
                           "self_attn.indexer.weights_proj.weight", "self_attn.indexer.k_norm.weight",
                           "self_attn.indexer.k_norm.bias", "mlp.experts.0.gate_proj.weight_scale_inv")]
    copies = [m + "embed_tokens.weight", m + "shared_head.head.weight"]
    for k in mtp:
        assert k in raw, k
    for k in copies:
        assert (k in raw) == spec["mtp_copies"], k
    if spec["mtp_copies"]:
        assert torch.equal(raw[copies[0]], raw["model.embed_tokens.weight"])
        assert torch.equal(raw[copies[1]], raw["lm_head.weight"])
    assert not any(k.startswith(f"model.layers.{N + 1}.") for k in raw)
    return raw, deq, n_fp8


def state_dict_from_files(spec, deq):
    """The dequantized files as a transformers state dict (experts packed, MTP layer left out)."""
    N = spec["cfg"]["num_hidden_layers"]
    E = spec["cfg"]["n_routed_experts"]
    sd = {}
    for key, a in deq.items():
        if key.startswith("model.layers.") and int(key.split(".")[2]) >= N:
            continue
        if ".mlp.experts." in key:
            continue
        sd[key] = torch.from_numpy(a.copy())
    for l in range(N):
        pre = f"model.layers.{l}.mlp.experts."
        if pre + "0.gate_proj.weight" not in deq:
            continue
        sd[pre + "gate_up_proj"] = torch.from_numpy(np.stack(
            [np.concatenate([deq[f"{pre}{e}.gate_proj.weight"], deq[f"{pre}{e}.up_proj.weight"]]) for e in range(E)]))
        sd[pre + "down_proj"] = torch.from_numpy(np.stack([deq[f"{pre}{e}.down_proj.weight"] for e in range(E)]))
    return sd


def reload_check(spec, outdir, deq, expected, ids):
    """AutoConfig from config.json; a transformers model built from it and loaded from the files."""
    results = {}
    sd = state_dict_from_files(spec, deq)
    for plan in spec["plans"]:
        cfg = AutoConfig.from_pretrained(outdir)
        assert cfg.model_type == spec["family"]
        if spec["family"] == "glm_moe_dsa":
            assert cfg.indexer_types == mg.plan_to_types(config_plan(spec))
            cfg.indexer_types = mg.plan_to_types(plan)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        model = mg.model_class(spec["family"])(cfg).eval()
        res = model.load_state_dict(sd, strict=False)
        assert not [k for k in res.missing_keys if not k.endswith("inv_freq")], res.missing_keys
        assert all(".self_attn.indexer." in k and plan[int(k.split(".")[2])] == "S" for k in res.unexpected_keys), \
            res.unexpected_keys
        if spec["family"] == "deepseek_v32":
            mg.patch_dsv32_sharing(model, plan)
        out, _ = mg.run_plan(spec, model, plan, ids)
        exp = expected[plan]
        diff = (out["logits"] - exp["logits"]).abs().max().item()
        same = all(torch.equal(out[f"topk.{l}"], exp[f"topk.{l}"]) for l in range(len(plan)))
        results[plan] = (diff, same)
    return results


def with_fp8_loader(spec, fn, wrong=None):
    """Run fn() with make_goldens' numpy forward reading FP8 files (this process only; make_goldens.py
    itself is unchanged)."""
    def np_load_fp8(d):
        deq, _ = np_dequant(read_raw(d), spec["quant"], wrong)
        return {k: v.astype(np.float64) for k, v in deq.items()}, None

    saved = mg.np_load_weights
    mg.np_load_weights = np_load_fp8
    try:
        return fn()
    finally:
        mg.np_load_weights = saved


def numpy_check(spec, outdir, plan, exp):
    """make_goldens.np_forward (float64) on these files, through an FP8-aware weight loader."""
    return with_fp8_loader(spec, lambda: mg.numpy_check(outdir, plan, exp))


def sensitivity_check(spec, outdir, plan, exp):
    """The goldens catch a wrong block-scale rule: logits relative error of each wrong rule."""
    ids = exp["input_ids"].long().numpy()
    ref = exp["logits"].double().numpy()
    errs = {}
    for wrong in ("first_block", "even_split"):
        logits, _, _ = with_fp8_loader(spec, lambda: mg.np_forward(outdir, plan, ids), wrong)
        errs[wrong] = float(np.abs(logits - ref).max() / np.abs(ref).max())
        assert errs[wrong] > 100 * 1e-4, (spec["name"], plan, wrong, errs[wrong])
    return errs


# ----------------------------------------------------------------------------------------------
# bad checkpoints


def write_tiny(outdir, mutate=None):
    """ok_tiny and its one-defect variants: config.json + model.safetensors."""
    spec = TINY
    _, ckpt = build_storage(dict(spec, mtp_copies=False), with_mtp=False)
    os.makedirs(outdir)
    write_config(dict(spec, shards=1), outdir, "F")
    with open(os.path.join(outdir, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("num_nextn_predict_layers")
    if mutate:
        mutate(cfg, ckpt)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file({k: ckpt[k].contiguous() for k in sorted(ckpt, key=sort_key)},
              os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})


def bad_mutations():
    L = "model.layers.0."

    def scale_shape(cfg, ck):  # gate_proj [16, 32]: grid [1, 1]; store [1, 2]
        k = L + "mlp.gate_proj.weight_scale_inv"
        assert tuple(ck[k].shape) == (1, 1)
        ck[k] = torch.cat([ck[k], ck[k]], 1).contiguous()

    def missing_scale(cfg, ck):
        del ck[L + "mlp.down_proj.weight_scale_inv"]

    def scale_beside_bf16(cfg, ck):  # o_proj stored BF16 (its dequantized values), its scale left in
        k = L + "self_attn.o_proj.weight"
        deq = ck[k].to(torch.float32) * ck[k + "_scale_inv"].repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[
            : ck[k].shape[0], : ck[k].shape[1]]
        ck[k] = deq.to(torch.bfloat16)

    def quant_method(cfg, ck):
        cfg["quantization_config"]["quant_method"] = "gptq"

    def fmt(cfg, ck):
        cfg["quantization_config"]["fmt"] = "e5m2"

    def nan_scale(cfg, ck):
        ck[L + "self_attn.q_b_proj.weight_scale_inv"][0, 0] = float("nan")

    def inf_scale(cfg, ck):
        ck[L + "mlp.up_proj.weight_scale_inv"][0, 0] = float("inf")

    def block_size(cfg, ck):
        cfg["quantization_config"]["weight_block_size"] = [64, 64]

    return {"bad_scale_shape": scale_shape, "bad_missing_scale": missing_scale,
            "bad_scale_beside_bf16": scale_beside_bf16, "bad_quant_method": quant_method, "bad_fmt": fmt,
            "bad_nan_scale": nan_scale, "bad_inf_scale": inf_scale, "bad_block_size": block_size}


def problems(outdir):
    """What a loader must reject, as the keys / tensor names its errors should name."""
    with open(os.path.join(outdir, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    found = []
    for key, ok in (("quant_method", q.get("quant_method") == "fp8"), ("fmt", q.get("fmt") == "e4m3"),
                    ("activation_scheme", q.get("activation_scheme") == "dynamic"),
                    ("weight_block_size", q.get("weight_block_size") == [128, 128]),
                    ("scale_fmt", q.get("scale_fmt") in (None, "ue8m0"))):
        if not ok:
            found.append("quantization_config." + key)
    raw = read_raw(outdir)
    for key, t in sorted(raw.items()):
        if key.endswith("_scale_inv"):
            w = raw.get(key[: -len("_scale_inv")])
            if w is None or w.dtype != torch.float8_e4m3fn:
                found.append(key[: -len("_scale_inv")])  # a scale beside a non-FP8 (or no) tensor
            elif tuple(t.shape) != tuple(math.ceil(d / BLOCK) for d in w.shape) or t.dtype != torch.float32:
                found.append(key)
            elif not (bool(torch.isfinite(t).all()) and bool((t > 0).all())):
                found.append(key)
        elif t.dtype == torch.float8_e4m3fn and key + "_scale_inv" not in raw:
            found.append(key)
    return found


def check_ok_tiny(outdir):
    raw = read_raw(outdir)
    _, n = np_dequant(raw, TINY["quant"])
    cfg = AutoConfig.from_pretrained(outdir)
    assert cfg.model_type == "glm_moe_dsa"
    assert problems(outdir) == []
    return n


# ----------------------------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tv, trv = torch.__version__, transformers.__version__
    print(f"torch {tv}  transformers {trv}  safetensors {safetensors.__version__}  numpy {np.__version__}  "
          f"python {sys.version.split()[0]}")
    os.makedirs(args.out, exist_ok=True)
    for entry in sorted(os.listdir(args.out)):  # everything but the README is regenerated
        path = os.path.join(args.out, entry)
        if entry != "README.md":
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    summary, notes = [], []
    for spec in MODELS:
        name, plans = spec["name"], spec["plans"]
        N = spec["cfg"]["num_hidden_layers"]
        assert all(len(p) == N and p[0] == "F" for p in plans)
        cplan = config_plan(spec)
        assert all(cplan[l] == "F" for p in plans for l in range(N) if p[l] == "F"), "an F layer without indexer"
        outdir = os.path.join(args.out, name)
        os.makedirs(outdir)
        ref_sd, ckpt = build_storage(spec)
        if spec["family"] == "glm_moe_dsa":  # S layers of the config's plan ship no indexer tensors
            ckpt = {k: v for k, v in ckpt.items() if not (
                ".self_attn.indexer." in k and int(k.split(".")[2]) < N and cplan[int(k.split(".")[2])] == "S")}
        models = {plan: build_plan_model(spec, plan, ref_sd) for plan in plans}
        T, vocab = spec["T"], spec["cfg"]["vocab_size"]
        k = min(spec["cfg"]["index_topk"], T)
        for attempt in range(mg.MAX_SEEDS):
            seed = spec["ids_seed"] + attempt
            ids = torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(seed))
            expected, worst_gap, worst_router = {}, float("inf"), float("inf")
            for plan in plans:
                out, router = mg.run_plan(spec, models[plan], plan, ids)
                expected[plan] = out
                worst_gap = min(worst_gap, mg.index_gap_ok(out, plan, k))
                worst_router = min([worst_router] + router)
            ok = worst_gap > mg.GAP_REL and worst_router > mg.ROUTER_MARGIN
            print(f"  {name}: ids seed {seed}: min rel index gap {worst_gap:.3e}, "
                  f"min router margin {worst_router:.3e} -> {'ok' if ok else 'retry'}")
            if ok:
                break
        else:
            raise SystemExit(f"{name}: no well-conditioned ids within {mg.MAX_SEEDS} seeds")
        n_seeds = attempt + 1
        notes.append((name, n_seeds, seed, worst_gap, worst_router))

        write_config(spec, outdir, cplan)
        files = write_weights(spec, ckpt, outdir)
        with open(os.path.join(outdir, "ids.txt"), "w") as f:
            f.write(" ".join(str(int(i)) for i in ids.tolist()) + "\n")
        quant = "fp8 e4m3 128x128" + (" ue8m0" if spec["quant"].get("scale_fmt") == "ue8m0" else "")
        for plan in plans:
            meta = {"plan": plan, "family": spec["family"], "model": name, "torch": tv, "transformers": trv,
                    "T": str(T), "k": str(k), "ids_seed": str(seed), "seeds_tried": str(n_seeds),
                    "weights": quant + ", dequantized to f32"}
            mg.save_file_sorted_meta(expected[plan], os.path.join(outdir, f"expected.{plan}.safetensors"), meta)

        raw, deq, n_fp8 = check_files(spec, outdir, ref_sd)
        rel = reload_check(spec, outdir, deq, expected, ids)
        for plan in plans:
            diff, same = rel[plan]
            assert same, f"{name} {plan}: reloaded top-k differ"
            assert diff <= 1e-6, f"{name} {plan}: reloaded logits differ by {diff}"
            np_err, np_serr = numpy_check(spec, outdir, plan, expected[plan])
            assert np_err < 1e-4 and np_serr < 1e-4, (name, plan, np_err, np_serr)
            wrong = sensitivity_check(spec, outdir, plan, expected[plan])
            print(f"  {name} {plan}: logits rel error with a wrong scale rule: "
                  + ", ".join(f"{k} {v:.2e}" for k, v in wrong.items()))
            fn = os.path.join(outdir, f"expected.{plan}.safetensors")
            summary.append((name, plan, T, k, expected[plan]["logits"].abs().max().item(),
                            os.path.getsize(fn), diff, np_err, np_serr))
        wbytes = sum(os.path.getsize(os.path.join(outdir, fn)) for fn in files)
        n_partial = sum(1 for key, t in raw.items() if t.dtype == torch.float8_e4m3fn
                        and any(d % BLOCK for d in t.shape) and any(d > BLOCK for d in t.shape))
        print(f"  {name}: weights {files} {wbytes} bytes, {len(raw)} tensors, {n_fp8} FP8 "
              f"({n_partial} with a partial edge block and more than one block on some axis)")

    ok_dir = os.path.join(args.out, TINY["name"])
    write_tiny(ok_dir)
    n_tiny = check_ok_tiny(ok_dir)
    assert sorted(bad_mutations()) == sorted(BAD)
    for spec in MODELS:
        assert problems(os.path.join(args.out, spec["name"])) == [], spec["name"]
    for bad, mutate in bad_mutations().items():
        write_tiny(os.path.join(args.out, bad), mutate)
        assert problems(os.path.join(args.out, bad)) == [BAD[bad]], (bad, problems(os.path.join(args.out, bad)))
        print(f"  {bad}: names {BAD[bad]}")
    print(f"  {TINY['name']}: {n_tiny} FP8 tensors (the valid control)")

    print()
    print(f"{'model':8} {'plan':5} {'T':>3} {'k':>3} {'max|logit|':>10} {'bytes':>7} {'reload diff':>11} "
          f"{'np logit rel':>12} {'np score rel':>12}")
    for r in summary:
        print(f"{r[0]:8} {r[1]:5} {r[2]:3d} {r[3]:3d} {r[4]:10.4f} {r[5]:7d} {r[6]:11.3e} {r[7]:12.3e} {r[8]:12.3e}")
    print()
    for name, n, seed, g, r in notes:
        print(f"{name}: {n} ids seed(s) tried (used {seed}); min rel index gap {g:.3e}, min router margin {r:.3e}")
    total = 0
    for root, _, fns in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, fn)) for fn in fns)
    print(f"total size of {args.out}: {total} bytes")


if __name__ == "__main__":
    main()
