"""Caption-quality metrics on host: COCO n-gram metrics, text statistics and CLIP-S / RefCLIP-S.

  * `coco_metrics`: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of the MS-COCO caption evaluation (pycocoevalcap 1.2,
    the Python 3 port of github.com/tylin/coco-caption), after its PTB tokenisation. Needs Java (`java` on PATH):
    the tokeniser and METEOR are Java programs. SPICE is left out on purpose (it downloads Stanford models).
  * `text_statistics`: length, vocabulary and repetition of generated captions (no references needed).
  * `clip_score` / `ref_clip_score`: CLIP-S and RefCLIP-S of Hessel et al. (2021), "CLIPScore: A Reference-free
    Evaluation Metric for Image Captioning", from embeddings computed elsewhere (pure NumPy).
"""
from __future__ import annotations

import re
import shutil
from typing import Sequence

import numpy as np

from xmodal_jax.errors import ConfigError, DataError, MissingError

COCO_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d")
CLIP_SCORE_W = 2.5  # Hessel et al. (2021): rescales CLIP ViT-B/32 cosines (rarely above 0.4) towards [0, 1].
REPEAT_MAX_N = 4  # text_statistics: longest n-gram whose back-to-back repetition makes a caption repetitive.
REPEAT_ANYWHERE_N = (2, 3)  # text_statistics: "repeat_{n}", an n-gram occurring twice anywhere in a caption.
_IGNORED_PUNCTUATION = ",:."
_JAVA_FIX = ("install a Java runtime, e.g. `sudo apt-get install -y default-jre-headless` "
             "(or run `bash launch/install_java.sh`)")

# ------------------------------------------------------------------------------------------------ coco metrics


def coco_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                 metrics: Sequence[str] = COCO_METRICS) -> dict[str, float]:
  """MS-COCO caption metrics of one prediction per image against that image's references, x100 as papers report.

  Every text goes through pycocoevalcap's `PTBTokenizer` (Stanford PTB tokeniser, lower-cased, punctuation dropped)
  first, as in `pycocoevalcap.eval.COCOEvalCap`. Scores are corpus-level, as the COCO evaluation server reports
  them: BLEU from n-gram counts summed over the corpus (`closest` reference length for the brevity penalty),
  METEOR 1.5 (`-l en -norm`) from its aggregated statistics, ROUGE-L (LCS F-measure, beta = 1.2) and CIDEr-D as
  means over images. Every value (CIDEr-D included) is multiplied by 100: BLEU-4 0.301 is reported as 30.1 and
  CIDEr-D 1.15 as 115.

  CIDEr-D: pycocoevalcap's `Cider` (its `method()` says "CIDEr") is CIDEr-D, checked in its source
  (`cider/cider_scorer.py`, version 1.2): the candidate's tf-idf n-gram vector (n = 1..4) is clipped against each
  reference's (`min(vec_hyp, vec_ref) * vec_ref`), the cosine is multiplied by a Gaussian length penalty
  `exp(-(len_hyp - len_ref)^2 / (2 sigma^2))` with sigma = 6, averaged over n and over the references, and
  multiplied by 10; there is no stemming. The document frequencies are those of the evaluated images' references,
  so CIDEr-D depends on the whole evaluated set, and is 0 for a single image (idf = log(1) - log(1) = 0).

  An empty prediction (or one of punctuation only) is scored, not rejected: it matches nothing, so it scores 0 on
  every metric for its image (and still counts towards BLEU's brevity penalty).

  Args:
    predictions: [N] one generated caption per image.
    references: [N] per image, its non-empty list of reference captions (any number, e.g. 5).
    metrics: which of COCO_METRICS to compute; leaving out "meteor" saves METEOR's start-up (about 10 s: it
      loads a paraphrase table).

  Returns:
    {name: score} for the requested names of COCO_METRICS, in [0, 100] (CIDEr-D in [0, 1000]).

  Raises:
    DataError: the inputs are not N captions and N non-empty lists of non-empty reference captions.
    ConfigError: an unknown metric name.
    MissingError: `java` is not installed.
  """
  return coco_metrics_and_items(predictions, references, metrics=metrics)[0]


def coco_metrics_and_items(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                           metrics: Sequence[str] = COCO_METRICS) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """`coco_metrics`, and the per-image scores of the metrics that are means over images (CIDEr-D: "cider_d"
  float64 [N], x100, whose mean is the metric; BLEU and METEOR are corpus-level, ROUGE-L is left out), for
  bootstrap confidence intervals over images."""
  metrics = _check_metric_names(metrics)
  _check_coco_inputs(predictions, references)
  if shutil.which("java") is None:
    raise MissingError(f"coco_metrics needs `java` on PATH for the PTB tokeniser and METEOR; {_JAVA_FIX}.")
  res, gts = _ptb_tokenize(predictions, references)
  scores = {}
  if any(name.startswith("bleu") for name in metrics):
    from pycocoevalcap.bleu.bleu import Bleu
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"bleu_{n + 1}": value for n, value in enumerate(bleu)})
  if "meteor" in metrics:
    scores["meteor"] = _meteor(gts, res)
  if "rouge_l" in metrics:
    from pycocoevalcap.rouge.rouge import Rouge
    scores["rouge_l"] = Rouge().compute_score(gts, res)[0]
  items = {}
  if "cider_d" in metrics:
    from pycocoevalcap.cider.cider import Cider
    scores["cider_d"], per_image = Cider().compute_score(gts, res)
    items["cider_d"] = 100.0 * np.asarray(per_image, np.float64)  # in gts order: image rows 0..N-1
  return {name: 100.0 * float(scores[name]) for name in metrics}, items


def _check_metric_names(metrics: Sequence[str]) -> tuple[str, ...]:
  if isinstance(metrics, str):
    metrics = (metrics,)
  unknown = [name for name in metrics if name not in COCO_METRICS]
  if unknown or not metrics:
    raise ConfigError(f"coco_metrics: metrics must be a non-empty subset of {list(COCO_METRICS)}, got "
                      f"{list(metrics)!r}; SPICE is not offered (it downloads Stanford CoreNLP models).")
  return tuple(name for name in COCO_METRICS if name in metrics)


def _check_coco_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]):
  """Raises DataError unless predictions is [N] str and references [N] non-empty lists of non-blank str."""
  if isinstance(predictions, str) or not all(isinstance(p, str) for p in predictions):
    raise DataError("coco_metrics: predictions must be a sequence of caption strings, one per image.")
  if len(predictions) == 0:
    raise DataError("coco_metrics: no predictions; pass one generated caption per image.")
  if len(references) != len(predictions):
    raise DataError(f"coco_metrics: {len(predictions)} predictions but {len(references)} reference lists; pass "
                    "one list of reference captions per predicted caption, in the same image order.")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
      raise DataError(f"coco_metrics: references[{i}] must be a non-empty list of non-empty caption strings, got "
                      f"{refs!r}; wrap a single reference as [caption].")


def _ptb_tokenize(predictions: Sequence[str],
                  references: Sequence[Sequence[str]]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
  """PTB-tokenises all texts in one Java run: (res {i: [prediction]}, gts {i: [references]}) by image index."""
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  def clean(text: str) -> str:  # One line per text: the tokeniser is run with -preserveLines.
    return " ".join(text.replace("|||", " ").split())

  texts = {("res", i): [{"caption": clean(p)}] for i, p in enumerate(predictions)}
  texts.update({("gts", i): [{"caption": clean(r)} for r in refs] for i, refs in enumerate(references)})
  tokens = PTBTokenizer().tokenize(texts)
  if tokens.keys() != texts.keys() or any(len(tokens[k]) != len(v) for k, v in texts.items()):
    raise RuntimeError("PTBTokenizer returned fewer lines than it was given texts; check `java -version`.")
  gts = {i: tokens["gts", i] for i in range(len(references))}
  for i, refs in gts.items():
    if not all(refs):
      raise DataError(f"coco_metrics: a reference of image {i} has no words after PTB tokenisation (punctuation "
                      f"is dropped): {list(references[i])!r}; remove it.")
  return {i: tokens["res", i] for i in range(len(predictions))}, gts


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
  """Corpus METEOR 1.5 in [0, 1]; the Java subprocess is always shut down, also when scoring fails."""
  from pycocoevalcap.meteor.meteor import Meteor
  meteor = Meteor()
  try:
    return float(meteor.compute_score(gts, res)[0])
  finally:
    _close_meteor(meteor)


def _close_meteor(meteor) -> None:
  """Stops METEOR's Java process and closes its pipes (pycocoevalcap only does so in `__del__`)."""
  if meteor.lock.locked():  # compute_score raised while holding it; `__del__` would block on it forever.
    meteor.lock.release()
  meteor.__del__()  # Closes stdin, kills and waits for the process; running it again at garbage collection is a no-op.
  for pipe in (meteor.meteor_p.stdout, meteor.meteor_p.stderr):
    pipe.close()


# ------------------------------------------------------------------------------------- attribute-word agreement


def attribute_word_agreement(predictions: Sequence[str], references: Sequence[Sequence[str]],
                             words: frozenset[str], *, consensus: int = 2) -> dict[str, float]:
  """How well the attribute words (e.g. colours) of generated captions agree with the image's references, x100:

  precision: of the distinct words of `words` in each generated caption, the share (over all captions' such words)
             that some reference of that image also uses;
  recall:    of the distinct words of `words` that at least `consensus` references of an image use (what the
             annotators agree the image shows), the share the generated caption names;
  mentions:  the mean number of distinct such words per generated caption.
  Words are `caption_words` (lower-cased, punctuation dropped). Precision / recall are 0 where nothing counts.
  Our reading of the seed's "attribute words that match the image" on data without attribute labels."""
  if len(predictions) != len(references):
    raise DataError(f"attribute_word_agreement: {len(predictions)} predictions but {len(references)} reference "
                    "lists.")
  said = matched = wanted = named = 0
  for prediction, refs in zip(predictions, references):
    mine = set(caption_words(prediction)) & words
    counts: dict[str, int] = {}
    for ref in refs:
      for word in set(caption_words(ref)) & words:
        counts[word] = counts.get(word, 0) + 1
    agreed = {w for w, c in counts.items() if c >= consensus}
    said, matched = said + len(mine), matched + len(mine & set(counts))
    wanted, named = wanted + len(agreed), named + len(agreed & mine)
  return {"precision": 100.0 * matched / said if said else 0.0, "recall": 100.0 * named / wanted if wanted else 0.0,
          "mentions": said / max(len(predictions), 1)}


# --------------------------------------------------------------------------------------------- text statistics


def caption_words(caption: str) -> list[str]:
  """The words `text_statistics` counts: lower-cased, split on whitespace, with "," ":" "." removed."""
  return re.sub(f"[{re.escape(_IGNORED_PUNCTUATION)}]", " ", caption.lower()).split()


def text_statistics(predictions: Sequence[str]) -> dict[str, float]:
  """Length, vocabulary and repetition of generated captions.

  Words are those of `caption_words`: lower-cased, whitespace-separated, with "," ":" "." removed wherever they
  occur (so "circle ," and "circle," are both the word "circle").

  Definitions:
    * mean_length: mean number of words per caption (an empty caption has 0).
    * vocabulary: number of distinct words over all predictions.
    * repetition_rate: share of captions that repeat themselves, i.e. contain some n-gram, n in 1..REPEAT_MAX_N
      (4), twice back to back: "red red circle" (n = 1), "a red circle a red circle" (n = 3). This catches
      stutters and decoding loops of period <= 4 words, but not a phrase re-used later in the sentence ("a red
      circle and a red square" is not repetitive), which ordinary captions of several objects do. Honest captions
      can still repeat this way, with punctuation ignored ("a large red square , a large red square" for two
      alike objects): 0.46% of the shapes world's own train captions do, so compare with the references' rate.
    * repeated_ngram_share: per caption, 1 - distinct bigrams / bigrams (the share of its bigrams that repeat an
      earlier one, "seq-rep-2" of Welleck et al., 2020), averaged over all captions; a caption of fewer than 2
      words has share 0.
    * repeat_2, repeat_3: share of captions in which some bigram (trigram) occurs at least twice, anywhere ("a dog
      and a dog" repeats the bigram "a dog"). Unigrams are left out: articles and prepositions recur in ordinary
      captions ("a dog in a field"). Honest captions of two alike things repeat bigrams too ("a man in a red shirt
      and a woman in a red hat"), so compare with the references' rate.

  Args:
    predictions: [N] generated captions, N >= 1.

  Returns:
    {"mean_length", "vocabulary", "repetition_rate", "repeated_ngram_share", "repeat_2", "repeat_3"}; rates are
    fractions in [0, 1], vocabulary an int.
  """
  if isinstance(predictions, str) or not all(isinstance(p, str) for p in predictions):
    raise DataError("text_statistics: predictions must be a sequence of caption strings.")
  if len(predictions) == 0:
    raise DataError("text_statistics: no predictions; pass at least one caption.")
  words = [caption_words(p) for p in predictions]
  return {
      "mean_length": float(np.mean([len(w) for w in words])),
      "vocabulary": len({word for w in words for word in w}),
      "repetition_rate": float(np.mean([_repeats_back_to_back(w) for w in words])),
      "repeated_ngram_share": float(np.mean([_repeated_bigram_share(w) for w in words])),
      **{f"repeat_{n}": float(np.mean([_repeats_ngram(w, n) for w in words])) for n in REPEAT_ANYWHERE_N},
  }


def _repeats_back_to_back(words: Sequence[str], max_n: int = REPEAT_MAX_N) -> bool:
  """Whether words[i:i + n] == words[i + n:i + 2n] for some i and n in 1..max_n."""
  return any(words[i:i + n] == words[i + n:i + 2 * n]
             for n in range(1, max_n + 1) for i in range(len(words) - 2 * n + 1))


def _repeats_ngram(words: Sequence[str], n: int) -> bool:
  """Whether some n-gram occurs at least twice in words (anywhere, overlaps included)."""
  ngrams = list(zip(*(words[i:] for i in range(n))))
  return len(set(ngrams)) < len(ngrams)


def _repeated_bigram_share(words: Sequence[str]) -> float:
  bigrams = list(zip(words, words[1:]))
  return 1.0 - len(set(bigrams)) / len(bigrams) if bigrams else 0.0


# ------------------------------------------------------------------------------------------- CLIP-S, RefCLIP-S


def clip_score(image_emb: np.ndarray, caption_emb: np.ndarray, w: float = CLIP_SCORE_W) -> np.ndarray:
  """CLIP-S(c, v) = w * max(cos(c, v), 0) of each caption with its image (Hessel et al., 2021, eq. 1).

  Args:
    image_emb: [N, D] image embeddings v (any norm: rows are L2-normalised here).
    caption_emb: [N, D] embeddings c of the captions, row i describing image i (any norm).
    w: the rescaling weight; 2.5 in the paper.

  Returns:
    float64 [N], in [0, w].
  """
  image, caption = _unit_rows(image_emb, "image_emb"), _unit_rows(caption_emb, "caption_emb")
  if image.shape != caption.shape:
    raise DataError(f"clip_score: image_emb {image.shape} and caption_emb {caption.shape} must have the same shape "
                    "[N, D]: one caption per image, both in the same joint space.")
  return float(w) * np.maximum(np.sum(image * caption, axis=1), 0.0)


def ref_clip_score(image_emb: np.ndarray, caption_emb: np.ndarray, reference_emb: np.ndarray,
                   reference_owner: np.ndarray, w: float = CLIP_SCORE_W) -> np.ndarray:
  """RefCLIP-S (Hessel et al., 2021, eq. 2): harmonic mean of CLIP-S and the caption's best reference cosine.

  Our reading of eq. 2: RefCLIP-S(c, R, v) = H-Mean(CLIP-S(c, v), max(max_{r in R} cos(c, r), 0)), with
  CLIP-S(c, v) = w * max(cos(c, v), 0) as in eq. 1; w multiplies only the image term, the reference term is the
  plain cosine clipped at 0, and H-Mean(a, b) = 2ab / (a + b), taken as 0 when a = b = 0. The paper's clipping of
  the reference term at 0 is kept (the public clipscore.py takes the maximum cosine without it; the two agree
  whenever some reference has a non-negative cosine with the caption).

  Args:
    image_emb: [N, D] image embeddings (any norm: rows are L2-normalised here).
    caption_emb: [N, D] candidate caption embeddings, row i for image i (any norm).
    reference_emb: [M, D] reference caption embeddings (any norm).
    reference_owner: int [M], the image index in [0, N) of each reference; every image needs at least one.
    w: CLIP-S's rescaling weight; 2.5 in the paper.

  Returns:
    float64 [N], in [0, 2w / (w + 1)] (the harmonic mean of values in [0, w] and [0, 1]).
  """
  image_term = clip_score(image_emb, caption_emb, w)
  caption, reference = _unit_rows(caption_emb, "caption_emb"), _unit_rows(reference_emb, "reference_emb")
  owner = _check_owner(reference_owner, len(reference), len(caption))
  if reference.shape[1] != caption.shape[1]:
    raise DataError(f"ref_clip_score: reference_emb has dim {reference.shape[1]} but caption_emb has dim "
                    f"{caption.shape[1]}; embed references with the same text encoder.")
  best = np.full(len(caption), -np.inf)
  np.maximum.at(best, owner, np.sum(caption[owner] * reference, axis=1))
  reference_term = np.maximum(best, 0.0)
  total = image_term + reference_term
  return np.where(total > 0, 2 * image_term * reference_term / np.where(total > 0, total, 1.0), 0.0)


def _unit_rows(emb: np.ndarray, name: str) -> np.ndarray:
  """float64 [K, D] rows of `emb` scaled to unit L2 norm; DataError for a bad shape or a zero / non-finite row."""
  emb = np.asarray(emb, np.float64)
  if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
    raise DataError(f"{name} must be a non-empty 2-D array [num, dim], got shape {emb.shape}.")
  norm = np.linalg.norm(emb, axis=1, keepdims=True)
  bad = ~np.isfinite(norm[:, 0]) | (norm[:, 0] == 0)
  if bad.any():
    rows = np.flatnonzero(bad)[:5].tolist()
    raise DataError(f"{name} has {int(bad.sum())} zero or non-finite row(s), e.g. rows {rows}; a cosine needs a "
                    "finite non-zero vector: check the encoder's output.")
  return emb / norm


def _check_owner(reference_owner: np.ndarray, num_references: int, num_images: int) -> np.ndarray:
  """int64 [M] image index of each reference; DataError unless in range and covering every image."""
  owner = np.asarray(reference_owner)
  if owner.shape != (num_references,) or not np.issubdtype(owner.dtype, np.integer):
    raise DataError(f"reference_owner must be int [M] = [{num_references}] (the image of each reference row), got "
                    f"{owner.dtype} {owner.shape}.")
  owner = owner.astype(np.int64)
  if np.any((owner < 0) | (owner >= num_images)):
    raise DataError(f"reference_owner has indices outside [0, {num_images}); images and references must come from "
                    "the same split.")
  missing = np.flatnonzero(np.bincount(owner, minlength=num_images) == 0)
  if missing.size:
    raise DataError(f"{missing.size} image(s) have no reference, e.g. {missing[:5].tolist()}; RefCLIP-S needs at "
                    "least one reference per image (use clip_score for reference-free scoring).")
  return owner
