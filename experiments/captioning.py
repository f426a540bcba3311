"""S5's table and claims: MLE, MLE + SCST under the CLIP reward, + the reward's grammar head, + attribute negatives;
caption metrics, CLIP-S / RefCLIP-S under an independent judge and under the base reward model, grammar score,
repetition rate, length (and on shapes attribute recall / precision and the parse rate); then caption-based
search R@K of MLE vs SCST captions (`xmodal caption --all`, TF-IDF over the generated captions).

The runs form a chain, each an ordinary `xmodal train` of configs/captioning/: the reward and judge two-tower
models (clip_<data>.py:reward|judge), the reward-model fine-tunes with a grammar head (reward_<data>.py:grammar,
:grammar_attribute), the MLE captioner, then its SCST fine-tunes (captioner_<data>.py:scst, :scst_grammar,
:scst_attribute), each told where the runs it reads are. The reward, judge and reward-model runs are the
instruments: one run each (seed 0) that every seed shares; the seeds vary the captioners.

  python -m experiments.run captioning:shapes --workdir=workdirs/s5_shapes --parallel=3
  python -m experiments.run captioning:flickr8k --workdir=workdirs/s5_flickr8k --parallel=1 [--config.X=V]
  python -m experiments.run captioning:tiny --workdir=/tmp/s5_tiny     # MLE vs SCST, seconds per run

Extra --config flags go to the captioner runs only (e.g. --config.data.source=folder:DIR).
"""
from __future__ import annotations

import os
import sys

from experiments import report
from experiments.experiment import (
  Claim,
  Convergence,
  Experiment,
  Metric,
  Row,
  Step,
  Table,
)

VARIANTS = ("shapes", "flickr8k", "tiny", "flickr8k_pretrained")
ROWS = (("MLE", "mle"), ("MLE + SCST (CLIP reward)", "scst"), ("+ grammar head", "scst_grammar"),
        ("+ attribute negatives", "scst_attribute"))
REWARD_OF = {"scst": "clip", "scst_grammar": "reward_grammar", "scst_attribute": "reward_grammar_attribute"}
COLUMNS = (("BLEU-4", "bleu_4"), ("METEOR", "meteor"), ("CIDEr-D", "cider_d"), ("CLIP-S judge", "judge/clip_s"),
           ("RefCLIP-S judge", "judge/refclip_s"), ("CLIP-S reward", "clip/clip_s"),
           ("RefCLIP-S reward", "clip/refclip_s"), ("grammar g", "grammar/grammar"),
           ("repetition %", "repetition_rate"), ("length", "mean_length"))
SHAPES_COLUMNS = (("attr. recall", "attribute_recall"), ("attr. precision", "attribute_precision"),
                  ("parse %", "parse_rate"))


def _scorers(context, grammar: bool) -> list[str]:
  flags = [f"--config.scorers.judge={context.run('judge')}", f"--config.scorers.clip={context.run('clip')}"]
  return flags + ([f"--config.scorers.grammar={context.run('reward_grammar')}"] if grammar else [])


def _caption_db(home: str) -> Step:
  """`xmodal caption --all` of a captioner run's val split: its caption database, for caption-based search."""
  return Step(f"caption_{home}", home=home, needs=(home,), done=("caption_db/meta.json",),
              command=lambda context, directory: [sys.executable, "-m", "xmodal_jax.main", "caption",
                                                  f"--workdir={directory}", "--all", "--split=val"])


def steps(data: str) -> dict[str, Step]:
  d = "configs/captioning"
  if data == "tiny":
    clip, judge, captioner, scst = (f"{d}/clip_shapes.py:tiny", f"{d}/clip_shapes.py:tiny_judge",
                                    f"{d}/captioner_shapes.py:tiny", f"{d}/captioner_shapes.py:tiny_scst")
  else:
    clip, judge, captioner, scst = (f"{d}/clip_{data}.py:reward", f"{d}/clip_{data}.py:judge",
                                    f"{d}/captioner_{data}.py", f"{d}/captioner_{data}.py:")
  grammar = data != "tiny"
  instrument = {"per_seed": False, "budget": False}
  out = {"clip": Step("clip", clip, **instrument), "judge": Step("judge", judge, **instrument)}
  if grammar:
    for name, variant in (("reward_grammar", "grammar"), ("reward_grammar_attribute", "grammar_attribute")):
      out[name] = Step(name, f"{d}/reward_{data}.py:{variant}", lambda c: [f"--config.init_from={c.run('clip')}"],
                       needs=("clip",), **instrument)
  out["mle"] = Step("mle", captioner,
                    lambda c: [f"--config.reward.workdir={c.run('clip')}"] + _scorers(c, grammar),
                    needs=("clip", "judge") + (("reward_grammar",) if grammar else ()))
  for name, reward in REWARD_OF.items():
    if not grammar and name != "scst":
      continue
    config = scst if data == "tiny" else f"{scst}{name}"
    every = "" if data == "tiny" else "--config.evals.val.every=" + ("75" if data == "shapes" else "50")
    out[name] = Step(name, config, lambda c, reward=reward, every=every: [
        f"--config.init_from={c.run('mle')}", f"--config.reward.workdir={c.run(reward)}", *_scorers(c, grammar),
        *([every] if every else [])], needs=("mle", reward))
  if grammar:
    out.update({f"caption_{home}": _caption_db(home) for home in ("mle", "scst")})
  return out


def search_section(data: report.ReportData):
  """Caption-based search R@K of each captioner run with a caption database, and the claim SCST > MLE on R@10."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from xmodal_jax.serving import caption_search  # pylint: disable=import-outside-toplevel
  recalls: dict[str, dict[int, float]] = {}
  lines = []
  for label, row in ROWS:
    for seed, run in data.runs.get(row, {}).items():
      path = os.path.join(run.directory, "caption_db")
      if not os.path.exists(os.path.join(path, "meta.json")):
        continue
      db = caption_search.CaptionDatabase.load(path)
      r = caption_search.recall_at_k(db, [refs[0] for refs in db.references], np.arange(db.num_images),
                                     scoring="sum")
      recalls.setdefault(row, {})[seed] = r["t2i_r10"]
      lines.append(f"- {label}, seed {seed}: caption search over {db.num_images} images: R@1 {r['t2i_r1']:.1f}, "
                   f"R@5 {r['t2i_r5']:.1f}, R@10 {r['t2i_r10']:.1f} (no query word matched: {r['no_match']} of "
                   f"{r['num_queries']})")
  if not lines:
    return [], []
  parts = ["Caption-based search (the first human caption of every val image as the query, TF-IDF over the "
           "generated captions):\n\n" + "\n".join(lines)]
  judged = []
  if "mle" in recalls and "scst" in recalls:
    seeds = sorted(set(recalls["mle"]) & set(recalls["scst"]))
    judged.append(report.compare_values("caption-based search R@10 is higher with SCST captions than with MLE's",
                                        "search R@10", recalls["scst"], recalls["mle"],
                                        converged=data.converged("mle", seeds) and data.converged("scst", seeds)))
  return parts, judged


# ---- flickr8k_pretrained: S5 over the pretrained towers (issue 31) -------------------------------------------------
# The seed's contrast (SCST under a CLIP-style reward vs under an n-gram reward) and its grammar / attribute parts,
# on Flickr8k val. Instruments, one run each shared by every seed: the reward (the pretrained dual encoder), the
# judge (another image network and seed), the reward-model fine-tunes; and the MLE captioner every SCST row starts
# from (one run: the seeds vary the SCST fine-tunes, i.e. sampling and batch order; the MLE row is one seed).
PRETRAINED_ROWS = (("MLE (one run)", "mle"), ("SCST, CIDEr-D reward", "scst_cider"),
                   ("SCST, CLIP reward", "scst_clip"), ("SCST, CLIP reward + grammar head", "scst_grammar"),
                   ("SCST, CLIP + grammar + attribute negatives", "scst_attribute"))
PRETRAINED_REWARD_OF = {"scst_cider": "", "scst_clip": "reward", "scst_grammar": "reward_grammar",
                        "scst_attribute": "reward_grammar_attribute"}


def _items(key: str, transform=None):
  """Per-image scores of the val captioning evaluator's eval_items (for bootstrap CIs over images)."""
  return lambda items: items[key] if transform is None else transform(items[key])


PRETRAINED_COLUMNS = (
    Metric("BLEU-1", "val/bleu_1"), Metric("BLEU-4", "val/bleu_4"), Metric("METEOR", "val/meteor"),
    Metric("ROUGE-L", "val/rouge_l"),
    Metric("CIDEr-D", "val/cider_d", items=_items("cider_d"), items_of="val"),
    Metric("CLIP-S judge", "val/judge/clip_s", items=_items("judge/clip_s"), items_of="val", fmt=".3f"),
    Metric("RefCLIP-S judge", "val/judge/refclip_s", items=_items("judge/refclip_s"), items_of="val", fmt=".3f"),
    Metric("gen. R@1 judge", "val/judge/gen_r1", items=_items("judge/gen_rank", lambda r: 100.0 * (r <= 1)),
           items_of="val"),
    Metric("gen. R@10 judge", "val/judge/gen_r10", items=_items("judge/gen_rank", lambda r: 100.0 * (r <= 10)),
           items_of="val"),
    Metric("CLIP-S reward", "val/clip/clip_s", fmt=".3f"),
    Metric("grammatical %", "val/grammar/grammatical"),
    Metric("colour prec. %", "val/colour_precision"), Metric("colour recall %", "val/colour_recall"),
    Metric("repeat-2 %", "val/repeat_2"), Metric("vocabulary", "val/vocabulary", fmt=".0f"),
    Metric("length", "val/mean_length"), Metric("search R@10", "val/search_r10"))


def pretrained_steps() -> dict[str, Step]:
  d = "configs/captioning"
  instrument = {"per_seed": False, "budget": False}
  out = {"reward": Step("reward", "configs/retrieval/vsepp_flickr8k_pretrained.py", **instrument),
         "judge": Step("judge", f"{d}/judge_flickr8k.py", **instrument)}
  for name, variant in (("reward_grammar", "grammar"), ("reward_grammar_attribute", "grammar_attribute")):
    out[name] = Step(name, f"{d}/reward_flickr8k_pretrained.py:{variant}",
                     lambda c: [f"--config.init_from={c.run('reward')}"], needs=("reward",), **instrument)

  def scorers(c) -> list[str]:
    return [f"--config.scorers.judge={c.run('judge')}", f"--config.scorers.clip={c.run('reward')}",
            f"--config.scorers.grammar={c.run('reward_grammar')}"]

  out["mle"] = Step("mle", f"{d}/captioner_flickr8k_pretrained.py", scorers,
                    needs=("judge", "reward", "reward_grammar"), per_seed=False)
  for name, reward in PRETRAINED_REWARD_OF.items():
    out[name] = Step(name, f"{d}/captioner_flickr8k_pretrained.py:{name}", lambda c, reward=reward: [
        f"--config.init_from={c.run('mle')}", *([f"--config.reward.workdir={c.run(reward)}"] if reward else []),
        *scorers(c)], needs=("mle",) + ((reward,) if reward else ()))
  return out


def pretrained_experiment() -> Experiment:
  claims = (
      Claim("the CLIP reward beats the CIDEr-D reward on the judge's CLIP-S (the seed's claim)", "scst_clip",
            "scst_cider", "CLIP-S judge"),
      Claim("... and on the judge's RefCLIP-S", "scst_clip", "scst_cider", "RefCLIP-S judge"),
      Claim("... and on generated-caption retrieval R@1 under the judge", "scst_clip", "scst_cider",
            "gen. R@1 judge"),
      Claim("the CIDEr-D reward beats the CLIP reward on CIDEr-D (the known trade-off)", "scst_cider", "scst_clip",
            "CIDEr-D"),
      Claim("the grammar head lowers the repeated-bigram rate (A = CLIP reward alone)", "scst_clip", "scst_grammar",
            "repeat-2 %"),
      Claim("the grammar head raises the grammatical share", "scst_grammar", "scst_clip", "grammatical %"),
      Claim("... at equal judge CLIP-S (difference within 0.02 either way: A - B >= -0.02)", "scst_grammar",
            "scst_clip", "CLIP-S judge", threshold=-0.02),
      Claim("attribute negatives raise the share of colour words the references confirm (vs + grammar head)",
            "scst_attribute", "scst_grammar", "colour prec. %"),
      Claim("... and the colours the references agree on that the caption names", "scst_attribute",
            "scst_grammar", "colour recall %"))
  return Experiment(
      name="captioning:flickr8k_pretrained",
      title="S5 over the pretrained towers: MLE and SCST under CIDEr-D / CLIP rewards, Flickr8k val",
      config="configs/captioning/captioner_flickr8k_pretrained.py",
      rows={row: Row(label, step=row) for label, row in PRETRAINED_ROWS},
      steps=pretrained_steps(),
      tables=(Table("Captions of the val split (beam 3; judge = Lite0 + MiniLM dual encoder, seed 1):",
                    PRETRAINED_COLUMNS),),
      claims=claims,
      convergence=Convergence(("val/judge/clip_s",), tolerance=0.02),
      budget_note="the configs' own: MLE 3,000 steps (val every 500, best CIDEr-D), each SCST fine-tune 1,000 "
                  "(val every 250)",
      notes="CIDEr-D, CLIP-S, RefCLIP-S and generated-caption R@K have per-image scores: their claims are "
            "bootstrapped over images and seeds; the other columns over seeds alone. Colour precision / recall: "
            "evaluation/caption_metrics.attribute_word_agreement (a colour the caption names that some reference "
            "of the image uses; a colour >= 2 references use that the caption names).")


def get_experiment(variant: str) -> Experiment:
  if variant == "flickr8k_pretrained":
    return pretrained_experiment()
  split = {"shapes": "test", "flickr8k": "val", "tiny": "val"}[variant]
  columns = COLUMNS + (SHAPES_COLUMNS if variant == "shapes" else ())
  rows = {row: Row(label, step=row) for label, row in ROWS if variant != "tiny" or row in ("mle", "scst")}
  claims = [Claim("SCST raises the independent judge's CLIP-S over MLE by >= 5% relative", "scst", "mle",
                  "CLIP-S judge", threshold=0.05, relative=True)]
  if variant == "shapes":
    claims += [Claim("attribute negatives raise attribute recall by >= 5 points (vs SCST with the grammar head)",
                     "scst_attribute", "scst_grammar", "attr. recall", threshold=5.0),
               Claim("... while attribute precision falls by <= 2 points", "scst_attribute", "scst_grammar",
                     "attr. precision", threshold=-2.0),
               Claim("the grammar head raises the parse rate vs SCST alone", "scst_grammar", "scst", "parse %")]
  if variant != "tiny":
    claims.append(Claim("the grammar head lowers the repetition rate vs SCST alone (A = SCST alone)", "scst",
                        "scst_grammar", "repetition %"))
  return Experiment(
      name=f"captioning:{variant}",
      title=f"S5: captioning, MLE and SCST, {variant} {split}",
      config=f"configs/captioning/captioner_{'shapes' if variant == 'tiny' else variant}.py",
      rows=rows,
      steps=steps(variant),
      tables=(Table(f"Captions of the {split} split:",
                    tuple(Metric(label, f"{split}/{key}", fmt=".3g") for label, key in columns)),),
      claims=tuple(claims),
      convergence=Convergence(("val/judge/clip_s",), tolerance=0.02),
      budget_note={"shapes": "the configs' own: MLE 1,000 steps, each SCST fine-tune 150 (val every 75)",
                   "flickr8k": "the configs' own: MLE 800 steps, each SCST fine-tune 100 (val every 50)",
                   "tiny": "the :tiny configs' 4 steps (val at steps 2 and 4)"}[variant],
      after=("caption_mle", "caption_scst") if variant != "tiny" else (),
      sections=search_section,
      notes="Caption metrics have no per-item scores here: claims on them are bootstrapped over seeds alone. "
            "The reward, judge and reward-model runs (WORKDIR/<name>/seed0) are shared by every seed.")
