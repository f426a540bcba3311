"""Zero-shot classification (CLIP-style): classify images by their similarity to embedded class prompts.

Each class name is filled into every prompt template ("a photo of a {}."), every prompt is embedded by the
task's `embed_text`, the L2-normalised prompt embeddings of a class are averaged and L2-normalised again
(prompt ensembling, Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", sec. 3.1.4), and each image is predicted as the class of highest cosine similarity to its
`embed_image` embedding.

A task that offers this evaluator fills its EvalData of a split like this:

  texts, class_of_text = zero_shot.prompt_texts(label_names, templates)
  EvalData(image_inputs={"images": ...}, labels=labels, label_names=label_names,
           extras={"class_text_inputs": tokenize(texts),   # {name: [C*T, ...]}, the inputs of embed_text
                   "class_of_text": class_of_text})        # int [C*T]

and a config asks for it with `evaluator_config("zero_shot", split="val")`.
"""
from __future__ import annotations

import re
import string
from typing import Sequence

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.evaluation import classification
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import tables

_SCORE_ROWS = 8192  # images scored against all classes at once on the host (bounds the [rows, C] score block)
_TOP_K_METRIC = re.compile(r"top(\d+)_accuracy")


def prompt_texts(class_names: Sequence[str], templates: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """Every template filled with every class name.

  Args:
    class_names: the C class names, e.g. ("cat", "dog").
    templates: the T prompt templates, each a `str.format` pattern with one `{}` field, e.g. "a photo of a {}.".

  Returns:
    (texts, class_of_text): the C*T prompts, class-major (text c*T + t is template t filled with class c), and
    int32 [C*T], the class of each prompt.

  Raises:
    errors.ConfigError (a ValueError): no class names, no templates, or a template without exactly one `{}`.
  """
  class_names, templates = list(class_names), list(templates)
  if not class_names:
    raise errors.ConfigError("prompt_texts: class_names is empty; give the names of the classes to classify into.")
  if not templates:
    raise errors.ConfigError('prompt_texts: templates is empty; give at least one prompt template, e.g. '
                             '"a photo of a {}.".')
  for i, template in enumerate(templates):
    try:
      fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
      raise errors.ConfigError(f"prompt_texts: templates[{i}]={template!r} is not a str.format pattern ({e}); write "
                               "literal braces as '{{' and '}}'.") from e
    if fields not in ([""], ["0"]):
      raise errors.ConfigError(f"prompt_texts: templates[{i}]={template!r} must have exactly one '{{}}' where the "
                               f"class name goes (it has {len(fields)} field(s) {fields}), e.g. "
                               '"a photo of a {}.".')
  texts = [template.format(name) for name in class_names for template in templates]
  class_of_text = np.repeat(np.arange(len(class_names), dtype=np.int32), len(templates))
  return texts, class_of_text


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of x [R, D] scaled to unit length (all-zero rows stay zero)."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, np.finfo(x.dtype).tiny)


def class_embeddings(text_emb: np.ndarray, class_of_text: np.ndarray, num_classes: int) -> np.ndarray:
  """Prompt ensembling: text_emb [M, D] of the prompts, class_of_text int [M] -> unit class embeddings [C, D], each
  the normalised mean of its class's normalised prompt embeddings."""
  text_emb = _l2_normalize(np.asarray(text_emb, np.float32))
  sums = np.zeros((num_classes, text_emb.shape[-1]), np.float32)
  np.add.at(sums, np.asarray(class_of_text), text_emb)
  return _l2_normalize(sums)  # normalising the sum = normalising the mean


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """scores [N, C], labels int [N] -> int [N], the 0-based rank of each true class.

  Ties go to the lower class id, as np.argmax does, so rank 0 <=> argmax == label and top-k accuracy never falls
  below accuracy.
  """
  true = np.take_along_axis(scores, labels[:, None], axis=1)
  lower_id = np.arange(scores.shape[1])[None, :] < labels[:, None]
  return np.sum((scores > true) | ((scores == true) & lower_id), axis=1)


@evaluator_lib.register
class ZeroShotEvaluator(evaluator_lib.Evaluator):
  """Zero-shot classification of EvalData.image_inputs by `embed_image` against the class prompts of
  EvalData.extras (embedded by `embed_text`, ensembled per class); unlabelled images (label -1) are left out.

  Metrics (in %): accuracy, mean_class_accuracy, top{k}_accuracy (when there are more than top_k classes);
  count (images evaluated) and num_classes.
  """
  TYPE = "zero_shot"
  DEFAULTS = dict(embed_image="embed_image", embed_text="embed_text",
                  top_k=5)  # also top-k accuracy when there are more than top_k classes; 0 = none

  def __init__(self, name, spec):
    super().__init__(name, spec)
    if int(spec.top_k) < 0:
      raise errors.ConfigError(f"config.evals.{name}.top_k={spec.top_k}: use k >= 1 for top-k accuracy, or 0 for "
                               "none.")

  def _prompts(self, data: evaluator_lib.EvalData) -> tuple[dict, np.ndarray]:
    missing = [k for k in ("class_text_inputs", "class_of_text") if data.extras.get(k) is None]
    if missing:
      raise errors.ConfigError(
          f"Evaluator {self.name!r} (type zero_shot) needs EvalData.extras{missing}, which this task's eval_data does "
          "not provide: 'class_text_inputs' = the tokenised class prompts {name: [C*T, ...]} (inputs of embed_text), "
          "'class_of_text' = int [C*T], the class of each prompt (zero_shot.prompt_texts(label_names, templates) "
          "makes both from the class names); or use an evaluator type that fits the task.")
    text_inputs, class_of_text = data.extras["class_text_inputs"], np.asarray(data.extras["class_of_text"])
    rows = {len(leaf) for leaf in jax.tree.leaves(text_inputs)}
    if class_of_text.ndim != 1 or not np.issubdtype(class_of_text.dtype, np.integer) or rows != {len(class_of_text)}:
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['class_of_text'] (shape {class_of_text.shape}, "
                             f"{class_of_text.dtype}) must be int [M], one class per row of "
                             f"extras['class_text_inputs'] (rows {sorted(rows)}).")
    return text_inputs, class_of_text

  def evaluate(self, predict_fns, variables, data, runtime):
    embed_image = self.predict_fn(predict_fns, "embed_image")  # both looked up before any work
    embed_text = self.predict_fn(predict_fns, "embed_text")
    labels = np.asarray(data.need("labels", self.name))
    image_inputs = data.need("image_inputs", self.name)
    text_inputs, class_of_text = self._prompts(data)
    num_classes = len(data.label_names) or int(class_of_text.max()) + 1
    without = sorted(set(range(num_classes)) - set(class_of_text.tolist()))
    if class_of_text.min() < 0 or class_of_text.max() >= num_classes or without:
      names = [data.label_names[c] for c in without[:5]] if data.label_names else without[:5]
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.extras['class_of_text'] must give every one of the "
                             f"{num_classes} classes (EvalData.label_names) at least one prompt, with ids in "
                             f"[0, {num_classes}); it has ids in [{class_of_text.min()}, {class_of_text.max()}] "
                             f"and {len(without)} class(es) without a prompt, e.g. {names}.")
    rows = np.flatnonzero(labels >= 0)
    if len(rows) == 0:
      raise errors.DataError(f"Evaluator {self.name!r}: no labelled image (label >= 0) in split {self.split!r}.")
    if labels.max() >= num_classes:
      raise errors.DataError(f"Evaluator {self.name!r}: EvalData.labels go up to {labels.max()}, but there are only "
                             f"{num_classes} classes with prompts.")
    bs = self.spec.batch_size
    image_emb = runtime.map_batches(embed_image, variables, jax.tree.map(lambda x: np.asarray(x)[rows], image_inputs),
                                    bs)
    text_emb = runtime.map_batches(embed_text, variables, text_inputs, bs)
    image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
      raise errors.ConfigError(f"config.evals.{self.name}: embed_image={self.spec.embed_image!r} gives "
                               f"{image_emb.shape} and embed_text={self.spec.embed_text!r} gives {text_emb.shape}; "
                               "both must be [rows, D] embeddings of the same D.")
    classes = class_embeddings(text_emb, class_of_text, num_classes)
    image_emb, labels = _l2_normalize(image_emb), labels[rows]
    predictions, ranks = np.empty_like(labels), np.empty_like(labels)
    for i in range(0, len(labels), _SCORE_ROWS):  # cosine similarities [rows, C], a block of images at a time
      scores = image_emb[i:i + _SCORE_ROWS] @ classes.T
      predictions[i:i + _SCORE_ROWS] = np.argmax(scores, axis=1)
      ranks[i:i + _SCORE_ROWS] = label_ranks(scores, labels[i:i + _SCORE_ROWS])
    metrics = classification.classification_metrics(predictions, labels, num_classes)
    k = int(self.spec.top_k)
    if k and num_classes > k:
      metrics[f"top{k}_accuracy"] = 100.0 * float(np.mean(ranks < k))
    metrics["num_classes"] = float(num_classes)
    return metrics

  def format(self, metrics, title):
    top = sorted((int(m.group(1)), key) for key in metrics if (m := _TOP_K_METRIC.fullmatch(key)))
    headers = ["accuracy"] + [f"top-{k} accuracy" for k, _ in top] + ["mean class accuracy", "images", "classes"]
    row = ([metrics["accuracy"]] + [metrics[key] for _, key in top]
           + [metrics["mean_class_accuracy"], int(metrics["count"]), int(metrics["num_classes"])])
    return tables.markdown_table(headers, [row], title=title)
