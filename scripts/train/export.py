#!/usr/bin/env python3
"""Export the trained model to a Hugging Face `glm_moe_dsa` checkpoint, load it back, and verify it.

  export(model, out_dir, tokenizer_dir)   bf16 safetensors shards (< 15 MiB each) + index, config.json,
                                          generation_config.json, tokenizer files
  load_checkpoint(dir)                    -> our GlmMoeDsaLM (fp32) from such a directory
  verify(dir, ids)                        transformers (fp32, eager) vs our implementation on the same ids:
                                          sparse all-F, a 1/4 plan, and dense (index_topk >= T)

CLI: python3 scripts/train/export.py verify --model DIR [--ids-from corpus/heldout.bin] [--len 1024]
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import GlmMoeDsaLM, ModelConfig  # noqa: E402

SHARD_BYTES = 15 * 1024 * 1024


def hf_state_dict(model):
    """Our packed state dict -> the on-disk layout save_pretrained writes (experts one by one), bf16
    except the router correction bias (fp32, as in the released GLM-5 / DeepSeek checkpoints)."""
    out = {}
    I = model.cfg.moe_intermediate_size
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if name.endswith("mlp.experts.gate_up_proj"):
            pre = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"] = t[e, :I].contiguous()
                out[f"{pre}{e}.up_proj.weight"] = t[e, I:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            pre = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{pre}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out[name] = t
    for k in list(out):
        out[k] = out[k].float() if k.endswith("e_score_correction_bias") else out[k].to(torch.bfloat16)
    return out


def pack_state_dict(sd, cfg):
    """Inverse of hf_state_dict (any dtype -> fp32)."""
    out = {}
    experts = {}
    for k, t in sd.items():
        if ".mlp.experts." in k:
            pre, rest = k.split(".mlp.experts.")
            e, which = rest.split(".", 1)
            experts.setdefault(pre, {})[(int(e), which)] = t
        else:
            out[k] = t.float()
    for pre, d in experts.items():
        E = cfg.n_routed_experts
        out[pre + ".mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([d[(e, "gate_proj.weight")], d[(e, "up_proj.weight")]], 0) for e in range(E)]).float()
        out[pre + ".mlp.experts.down_proj"] = torch.stack([d[(e, "down_proj.weight")] for e in range(E)]).float()
    return out


def write_config(cfg, out_dir, indexer_types=None):
    d = cfg.hf_dict(indexer_types)
    try:
        from transformers import GenerationConfig, GlmMoeDsaConfig
        kw = {k: v for k, v in d.items() if k not in ("model_type",)}
        hc = GlmMoeDsaConfig(**kw, dtype="bfloat16")  # the dtype of the stored weights
        hc.save_pretrained(out_dir)
        GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                         do_sample=False, max_new_tokens=256).save_pretrained(out_dir)
    except ImportError:
        d["dtype"] = "bfloat16"
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(d, f, indent=2)
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                       "pad_token_id": cfg.pad_token_id, "do_sample": False, "max_new_tokens": 256}, f, indent=2)


def export(model, out_dir, tokenizer_dir=None, shard_bytes=SHARD_BYTES):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(out_dir, f))
    sd = hf_state_dict(model)
    # greedy sharding in a stable order: embeddings, layers in order, norm, head
    def order(k):
        if k.startswith("model.embed_tokens"):
            return (0, 0, k)
        if k.startswith("model.layers."):
            return (1, int(k.split(".")[2]), k)
        return (2, 0, k)
    keys = sorted(sd, key=order)
    shards, cur, size = [], [], 0
    for k in keys:
        nb = sd[k].numel() * sd[k].element_size()
        if cur and size + nb > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(k)
        size += nb
    if cur:
        shards.append(cur)
    n = len(shards)
    weight_map, total = {}, 0
    for i, ks in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: sd[k] for k in ks}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for k in ks:
            weight_map[k] = fname
            total += sd[k].numel() * sd[k].element_size()
        assert os.path.getsize(os.path.join(out_dir, fname)) < 16 * 1024 * 1024
    if n > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    write_config(model.cfg, out_dir)
    if tokenizer_dir:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(tokenizer_dir, f)):
                shutil.copy(os.path.join(tokenizer_dir, f), os.path.join(out_dir, f))
    return {"shards": n, "bytes": total, "files": sorted(os.listdir(out_dir))}


def config_from_json(path):
    with open(path) as f:
        d = json.load(f)
    cfg = ModelConfig()
    for k in list(vars(cfg)) + [f for f in ModelConfig.__dataclass_fields__]:
        if k in d:
            setattr(cfg, k, d[k])
    rp = d.get("rope_parameters") or {}
    if "rope_theta" in rp:
        cfg.rope_theta = rp["rope_theta"]
    if isinstance(cfg.eos_token_id, list):
        cfg.eos_token_id = cfg.eos_token_id[0]
    return cfg


def load_checkpoint(model_dir, device="cpu"):
    from safetensors.torch import load_file
    cfg = config_from_json(os.path.join(model_dir, "config.json"))
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(os.path.join(model_dir, f)))
    model = GlmMoeDsaLM(cfg)
    missing, unexpected = model.load_state_dict(pack_state_dict(sd, cfg), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {missing[:5]} unexpected {unexpected[:5]}")
    return model.to(device).float().eval(), cfg


def _compare(a, b):
    a, b = a.double(), b.double()
    d = (a - b).abs()
    pa, pb = a.log_softmax(-1), b.log_softmax(-1)
    kl = (pa.exp() * (pa - pb)).sum(-1)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "ref_abs_max": float(b.abs().max()),
            "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}


def verify(model_dir, ids, device="cpu"):
    """Logits of transformers' GlmMoeDsaForCausalLM (fp32, eager) vs ours, on `ids` [1, T]."""
    from transformers import GlmMoeDsaForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ours, cfg = load_checkpoint(model_dir, device)
    ids = ids.to(device)
    T = ids.shape[1]
    L = cfg.num_hidden_layers
    quarter = [i % 4 == 0 for i in range(L)]
    cases = [("sparse_all_F", None, {}),
             ("sparse_quarter", quarter, {"indexer_types": ["full" if f else "shared" for f in quarter]}),
             ("dense", "dense", {"index_topk": T})]
    report = {"tokens": int(T), "index_topk": cfg.index_topk}
    for name, plan, kw in cases:
        t0 = time.time()
        hf = GlmMoeDsaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager", **kw)
        hf = hf.to(device).eval()
        with torch.no_grad():
            ref = hf(ids, use_cache=False).logits[0].float()
            if plan == "dense":
                mine = ours(ids, mode="dense")[0].float()
            else:
                mine = ours(ids, mode="sparse", plan=plan)[0].float()
        r = _compare(mine.cpu(), ref.cpu())
        r["seconds"] = round(time.time() - t0, 1)
        report[name] = r
        del hf
    ok = all(report[n]["argmax_agree"] >= 0.999 and report[n]["mean_abs"] < 2e-3 * max(1.0, report[n]["ref_abs_max"])
             for n, _, _ in cases)
    report["ok"] = bool(ok)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--model", required=True)
    v.add_argument("--ids-from", default="corpus/heldout.bin")
    v.add_argument("--len", type=int, default=1024)
    v.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    ids = np.fromfile(args.ids_from, dtype=np.uint16)[: args.len].astype(np.int64)
    rep = verify(args.model, torch.from_numpy(ids)[None], args.device)
    print(json.dumps(rep, indent=1))
    sys.exit(0 if rep["ok"] else 1)


if __name__ == "__main__":
    main()
