"""The S5 results table and claims of one data set, from the results.json of its runs (launch/s5_pipeline.sh).

  python -m xmodal_jax.tasks.captioning.report shapes|flickr8k [--workdirs=workdirs] [--split=test]

Rows: MLE, MLE + SCST (CLIP reward), + grammar head, + attribute negatives (workdirs/s5_<data>_{mle, scst,
scst_grammar, scst_attribute}); columns: BLEU-4, METEOR, CIDEr-D, CLIP-S and RefCLIP-S under the independent judge
and under the base reward model, grammar score, repetition rate, mean length (and on shapes attribute recall /
precision and the parse rate). Then the issue's claims, each stated as holding or not, and caption-based search
R@10 of MLE vs SCST captions when both runs have a caption database (`xmodal caption --all`).
"""
from __future__ import annotations

import argparse
import json
import os

from xmodal_jax.evaluation import tables

ROWS = (("MLE", "mle"), ("MLE + SCST (CLIP reward)", "scst"), ("+ grammar head", "scst_grammar"),
        ("+ attribute negatives", "scst_attribute"))
COLUMNS = (("BLEU-4", "bleu_4"), ("METEOR", "meteor"), ("CIDEr-D", "cider_d"), ("CLIP-S judge", "judge/clip_s"),
           ("RefCLIP-S judge", "judge/refclip_s"), ("CLIP-S reward", "clip/clip_s"),
           ("RefCLIP-S reward", "clip/refclip_s"), ("grammar g", "grammar/grammar"),
           ("repetition %", "repetition_rate"), ("length", "mean_length"))
SHAPES_COLUMNS = (("attr. recall", "attribute_recall"), ("attr. precision", "attribute_precision"),
                  ("parse %", "parse_rate"))


def load_metrics(workdirs: str, data: str, split: str) -> dict[str, dict[str, float]]:
  out = {}
  for _, run in ROWS:
    path = os.path.join(workdirs, f"s5_{data}_{run}", "results.json")
    if os.path.exists(path):
      with open(path) as f:
        metrics = json.load(f)["metrics"]
      out[run] = {k[len(split) + 1:]: v for k, v in metrics.items() if k.startswith(f"{split}/")}
  return out


def claims(data: str, m: dict[str, dict[str, float]]) -> list[str]:
  """The issue's claims on these figures, each "holds" or "does not hold" (or "not measured")."""
  out = []

  def line(text, ok):
    out.append(f"- {text}: **{'holds' if ok else 'does not hold'}**")

  if "mle" in m and "scst" in m:
    a, b = m["mle"]["judge/clip_s"], m["scst"]["judge/clip_s"]
    line(f"SCST raises the independent judge's CLIP-S over MLE by >= 5% relative ({a:.4f} -> {b:.4f}, "
         f"{100 * (b / a - 1) if a else float('nan'):+.1f}%)", a > 0 and b >= 1.05 * a)
  if data == "shapes" and "scst_grammar" in m and "scst_attribute" in m:
    base, attr = m["scst_grammar"], m["scst_attribute"]
    dr = attr["attribute_recall"] - base["attribute_recall"]
    dp = attr["attribute_precision"] - base["attribute_precision"]
    line(f"attribute negatives raise attribute recall >= 5 points ({dr:+.2f}) while precision falls <= 2 "
         f"({dp:+.2f}), vs SCST with the grammar head", dr >= 5 and dp >= -2)
  if "scst" in m and "scst_grammar" in m:
    s, g = m["scst"], m["scst_grammar"]
    if data == "shapes":
      line(f"the grammar head raises the parse rate vs SCST alone ({s['parse_rate']:.2f} -> {g['parse_rate']:.2f})",
           g["parse_rate"] > s["parse_rate"])
    line(f"the grammar head lowers the repetition rate vs SCST alone ({s['repetition_rate']:.2f} -> "
         f"{g['repetition_rate']:.2f})", g["repetition_rate"] < s["repetition_rate"])
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("data", choices=["shapes", "flickr8k"])
  parser.add_argument("--workdirs", default="workdirs")
  parser.add_argument("--split", default="")
  args = parser.parse_args(argv)
  split = args.split or ("test" if args.data == "shapes" else "val")
  m = load_metrics(args.workdirs, args.data, split)
  columns = COLUMNS + (SHAPES_COLUMNS if args.data == "shapes" else ())
  rows = [[label] + [m[run].get(key) for _, key in columns] for label, run in ROWS if run in m]
  print(tables.markdown_table(["run"] + [c for c, _ in columns], rows, floatfmt=".3g",
                              title=f"S5 on {args.data} {split}"))
  print()
  print("\n".join(claims(args.data, m)))


if __name__ == "__main__":
  main()
