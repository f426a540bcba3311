"""The S5 results table and claims of one data set, from the results.json of its runs (launch/s5_pipeline.sh).

  python -m xmodal_jax.systems.captioning.report shapes|flickr8k [--workdirs=workdirs] [--split=test]

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


def search_recall(workdirs: str, data: str) -> list[str]:
  """Caption-based search R@K of each run with a caption database (`xmodal caption --workdir W --all --split val`):
  the first human caption of every image as the query, TF-IDF (the seed's summed weights) over the generated
  captions of the split's images."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from xmodal_jax.serving import caption_search  # pylint: disable=import-outside-toplevel
  out, recalls = [], {}
  for label, run in ROWS:
    path = os.path.join(workdirs, f"s5_{data}_{run}", "caption_db")
    if not os.path.exists(os.path.join(path, "meta.json")):
      continue
    db = caption_search.CaptionDatabase.load(path)
    queries = [refs[0] for refs in db.references]
    r = caption_search.recall_at_k(db, queries, np.arange(db.num_images), scoring="sum")
    recalls[run] = r
    out.append(f"- {label}: caption search over {db.num_images} images ({db.meta.get('split', '?')}): R@1 "
               f"{r['t2i_r1']:.1f}, R@5 {r['t2i_r5']:.1f}, R@10 {r['t2i_r10']:.1f} (no query word matched: "
               f"{r['no_match']} of {r['num_queries']})")
  if "mle" in recalls and "scst" in recalls:
    a, b = recalls["mle"]["t2i_r10"], recalls["scst"]["t2i_r10"]
    out.append(f"- caption-based search R@10 is higher with SCST captions than with MLE captions ({a:.1f} -> "
               f"{b:.1f}): **{'holds' if b > a else 'does not hold'}**")
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
  print("\n".join(claims(args.data, m) + search_recall(args.workdirs, args.data)))


if __name__ == "__main__":
  main()
