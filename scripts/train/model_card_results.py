#!/usr/bin/env python3
"""Fill the results section of docs/model-card.md from the report the GPU run brings back.

  tar -xzf report.tar.gz -C /tmp            (run_device.sh collect writes report.tar.gz)
  python3 scripts/train/model_card_results.py /tmp/report [--card docs/model-card.md] \
      [--plot docs/model-card-training.svg] [--device-minutes N]

Replaces everything between the markers <!-- results:begin --> and <!-- results:end --> in the card,
and copies the training-curve plot (SVG) next to it.
"""
import argparse
import json
import os
import re
import shutil


def load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--card", default="docs/model-card.md")
    ap.add_argument("--plot", default="docs/model-card-training.svg")
    ap.add_argument("--device-minutes", type=float, default=None, help="as the device tool reported (lease)")
    a = ap.parse_args()
    r = a.report
    out = []
    env = open(os.path.join(r, "env.txt")).read().strip() if os.path.exists(os.path.join(r, "env.txt")) else ""
    status = load(r, "status.json") or {}
    rows = []
    total_s = 0.0
    for stage in ("pretrain", "warmup", "sparse"):
        lg = load(r, f"log_{stage}.json")
        if not lg:
            continue
        sec = lg.get("seconds", 0)
        total_s += sec
        rows.append(f"| {stage} | {lg.get('steps', '?')} | {lg.get('tokens', 0) / 1e6:.1f} M | "
                    f"{sec / 60:.1f} | {lg.get('tokens', 0) / max(sec, 1e-9):,.0f} |")
    out.append("### Training run\n")
    if env:
        out.append("Machine and software (from the run):\n\n```\n" + env + "\n```\n")
    out.append("| stage | optimizer steps | tokens | minutes | tokens/s |")
    out.append("|---|---|---|---|---|")
    out += rows
    out.append("")
    out.append(f"Training wall time {total_s / 60:.1f} min" + (f"; device time of the whole run (lease, start-up "
                                                              f"and transfers included) {a.device_minutes:.1f} min"
                                                              if a.device_minutes else "") + ".\n")
    if status.get("failed"):
        out.append(f"**Stage that failed: {status['failed']}** (see train.log).\n")
    ex = load(r, "export.json")
    if ex:
        v = ex.get("verify", {})
        out.append(f"Export: {ex.get('shards')} shard(s), {ex.get('bytes', 0) / 2**20:.1f} MiB, from "
                   f"`{ex.get('from_checkpoint')}`. Check against transformers 5.17 (fp32, eager) on "
                   f"{v.get('tokens', '?')} held-out tokens: " + ("**pass**" if v.get("ok") else "**FAIL**") + ".\n")
        if any(isinstance(x, dict) for x in v.values()):
            out.append("| case | max abs logit diff | mean abs | argmax agreement |")
            out.append("|---|---|---|---|")
            for k, x in v.items():
                if isinstance(x, dict):
                    out.append(f"| {k} | {x['max_abs']:.2e} | {x['mean_abs']:.2e} | {100 * x['argmax_agree']:.2f} % |")
            out.append("")
    if os.path.exists(os.path.join(r, "loss_curve.svg")):
        os.makedirs(os.path.dirname(a.plot) or ".", exist_ok=True)
        shutil.copy(os.path.join(r, "loss_curve.svg"), a.plot)
        rel = os.path.relpath(a.plot, os.path.dirname(a.card) or ".")
        out.append(f"![training curves]({rel})\n")
    if os.path.exists(os.path.join(r, "eval.md")):
        out.append("### Evaluation\n")
        out.append(open(os.path.join(r, "eval.md")).read().strip() + "\n")
    ev = load(r, "eval.json")
    if ev and ev.get("overlap"):
        m = ev["overlap"]["matrix"]
        out.append("Full top-k overlap matrix (row i, column j: mean |T_i ∩ T_j| / k):\n")
        out.append("| | " + " | ".join(str(j) for j in range(len(m))) + " |")
        out.append("|---|" + "---|" * len(m))
        for i, row in enumerate(m):
            out.append(f"| {i} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        out.append("")
    block = "\n".join(out)
    card = open(a.card).read()
    new, n = re.subn(r"(<!-- results:begin -->\n).*?(\n<!-- results:end -->)", lambda mm: mm.group(1) + block + mm.group(2),
                     card, flags=re.S)
    if n != 1:
        raise SystemExit("error: results markers not found in " + a.card)
    open(a.card, "w").write(new)
    print(f"updated {a.card}")


if __name__ == "__main__":
    main()
