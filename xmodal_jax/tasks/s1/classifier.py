"""S1 for inference: the trained stages of a pipeline workdir composed into one image classifier.

image -> text generator -> top-N query phrases (nearest neighbours of x among the query vectors) -> mean of
their text embeddings (200-d, or MiniLM's 384-d) = the text feature; image -> pixel CNN bottleneck = the pixel
feature; [text; pixel] -> fusion classifier -> label. Used by the features stage (without a fusion stage) and
by `xmodal classify`.

Every stage is loaded for inference from its own directory alone (`train/inference.py`): checkpoint params,
no optimiser state, the assets its training wrote (query vocabulary, n-gram vocabulary, input width). No data
source is read.
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np

from xmodal_jax import errors
from xmodal_jax import tasks
from xmodal_jax.data import prepared, preprocess, records
from xmodal_jax.serving import phrase_lookup
from xmodal_jax.train import inference, stages


def load_stage(config: ml_collections.ConfigDict, workdir: str, name: str, which: str = "latest",
               mesh_shape: Sequence[int] | None = None, fold: int | None = None) -> inference.LoadedModel:
  """Stage `name` of the pipeline `config` in `workdir`, loaded for inference: of a cross-fitted stage, the
  variant of `fold` (None: fold 0, the one serving uses); of any other stage, the one variant."""
  variants = stages.stage_folds(config, name)
  variant = -1 if variants == [-1] else (0 if fold is None else fold)
  task = tasks.create(stages.stage_config(config, name, variant), stages.stage_dir(workdir, name, variant))
  return inference.load_model(task, which=which, mesh_shape=mesh_shape)


class MultimodalClassifier:
  """Loads the stages named by the features stage `config.stages[features_stage]` (+ a fusion stage)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, features_stage: str = "features",
               fusion_stage: str | None = "fusion", mesh_shape: Sequence[int] | None = None,
               batch_size: int = 256, fold: int | None = None):
    """mesh_shape: run on this (data, model) mesh instead of the training one, e.g. (-1, 1) to serve on
    whatever devices this machine has. fold: which variant of the cross-fitted stages to load (None: fold 0;
    the features stage loads each in turn)."""
    self.config = config
    self.batch_size = batch_size
    spec = config.stages[features_stage]
    self.top_n, which = int(spec.top_n), spec.checkpoint
    self.generator = load_stage(config, workdir, spec.generator, which, mesh_shape, fold)
    self.queries: list[str] = list(self.generator.task.queries)
    # W [K, 64]: the query vectors phrases are generated from (extended by `add_queries`).
    self.query_vectors = self.generator.task.query_vectors(self.generator.variables)
    if spec.text_embedding == "minilm":
      from xmodal_jax.models import minilm  # pylint: disable=import-outside-toplevel  (optional dependency)
      self.embed_phrases = minilm.MiniLMEncoder.load().embed
    else:
      text = load_stage(config, workdir, spec.text_embedding, which, mesh_shape, fold)
      if text.task.queries != self.queries:
        raise errors.WorkdirError(f"Stages {spec.generator!r} and {spec.text_embedding!r} built different query vocabularies "
                         "(different data configs?); re-run the pipeline from scratch.")
      self.embed_phrases = lambda phrases: text.predict("embed_phrases", text.task.encode_phrases(phrases),
                                                        self.batch_size)
    self.query_table = self.embed_phrases(self.queries)  # text embedding of every query [K, Dt]
    self.pixel = load_stage(config, workdir, spec.pixel, which, mesh_shape, fold)
    self.label_names = tuple(self.pixel.task.label_names())
    self.fusion = load_stage(config, workdir, fusion_stage, "latest", mesh_shape) if fusion_stage else None
    if self.fusion is not None:
      self._check_fusion_width()
    # The generator reads images at config.data.image_size; the pixel stage at its tower's size, which may be
    # larger (a pretrained tower on real photos): each from the shorter side resized as its prepared data was.
    self.image_size = int(config.data.image_size)
    self.pixel_size = int(self.pixel.task.data_config().image_size)
    shapes = str(config.data.source).startswith("shapes")
    self._resize_to = {size: size if shapes else max(size, int(data.prepare_size))
                       for size, data in ((self.pixel_size, self.pixel.task.data_config()),
                                          (self.image_size, config.data))}

  @classmethod
  def from_workdir(cls, workdir: str, **kwargs) -> "MultimodalClassifier":
    """A finished pipeline run (its WORKDIR/config.json names the stages)."""
    config = inference.read_run_config(workdir)
    if not stages.is_pipeline(config) or "features" not in config.stages:
      what = f"a {config.task!r} run" if "task" in config else "no S1 pipeline"
      raise errors.WorkdirError(f"{workdir} holds {what}, not an S1 pipeline: `xmodal classify` needs a workdir "
                                "trained with configs/s1/*.py (e.g. xmodal train --config=configs/s1/shapes.py).")
    return cls(config, workdir, **kwargs)

  def _check_fusion_width(self) -> None:
    """The fusion head was trained on features of a fixed width; text features from another embedding
    (e.g. MiniLM after training on the siamese model) would not fit it: say so."""
    fusion = self.fusion.task
    width = {"text": self.query_table.shape[1],
             "pixel": int(self.pixel.task.config.model.bottleneck_dim)}
    have = sum(width[k] for k in fusion.inputs)
    if have != fusion.input_dim:
      raise errors.WorkdirError(f"The fusion stage was trained on {fusion.input_dim}-d inputs but these stages give "
                       f"{have}-d {'+'.join(fusion.inputs)} features (the features stage was re-run with another "
                       "config). Re-run the pipeline (`xmodal train` re-runs the stages whose inputs changed).")

  def image_embeddings(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, s, s, 3] -> the text generator's x [N, 64]."""
    return self.generator.predict("embed_image", {"images": self._at_size(images, self.image_size)},
                                  self.batch_size)

  def add_queries(self, phrases: Sequence[str], images: Sequence[np.ndarray]) -> None:
    """New queries without retraining (seed eq. 2): query c gets the prototype phi_c = mean of the normalised
    embeddings of its example images `images[c]` (uint8 [n_c, size, size, 3]); its text embedding comes from
    the text model. Existing query ids are unchanged."""
    if len(phrases) != len(images):
      raise ValueError(f"add_queries: {len(phrases)} phrases but {len(images)} image sets.")
    known = sorted(set(phrases) & set(self.queries))
    if known or len(set(phrases)) != len(phrases):
      raise ValueError(f"add_queries: phrases already in the vocabulary or repeated: {known or list(phrases)}.")
    if any(len(batch) == 0 for batch in images):
      raise ValueError("add_queries: every new phrase needs at least one example image.")
    feats = self.image_embeddings(np.concatenate(images))
    owner = np.repeat(np.arange(len(images)), [len(batch) for batch in images])
    members = owner[None, :] == np.arange(len(images))[:, None]
    prototypes = np.asarray(phrase_lookup.class_prototypes(feats, members), np.float32)
    self.query_vectors = np.asarray(phrase_lookup.extend_queries(self.query_vectors, prototypes), np.float32)
    self.query_table = np.concatenate([self.query_table, self.embed_phrases(list(phrases))]).astype(np.float32)
    self.queries += list(phrases)

  def _at_size(self, images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, s, s, 3] (as `load_image_files` gives them) -> [N, size, size, 3] for one of the two readers."""
    if images.shape[1] == size:
      return images
    return np.stack([preprocess.center_crop(prepared.resize_shorter_side(image, self._resize_to[size]), size)
                     for image in images])

  def features(self, images: np.ndarray, pixel_images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """uint8 images [N, s, s, 3] -> {"text" [N, Dt], "pixel" [N, Dp], "top_ids" [N, n], "top_scores" [N, n]}.

    `images` at the generator's size (and `pixel_images` at the pixel stage's, as the training data gave
    them), or only `images` as `load_image_files` gives them (each reader's size is made from them)."""
    if pixel_images is None:
      images, pixel_images = self._at_size(images, self.image_size), self._at_size(images, self.pixel_size)
    scores, ids = (np.asarray(a) for a in phrase_lookup.top_queries(
        self.image_embeddings(images), self.query_vectors, self.top_n))
    pixel = self.pixel.predict("embed_image", {"images": pixel_images}, self.batch_size)
    return {"text": self.query_table[ids].mean(axis=1).astype(np.float32), "pixel": pixel.astype(np.float32),
            "top_ids": ids.astype(np.int32), "top_scores": scores.astype(np.float32)}

  def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
    """uint8 [N, size, size, 3] -> per image {"label", "probability", "phrases": [(phrase, score)], "probabilities"}."""
    if self.fusion is None:
      raise ValueError("This MultimodalClassifier was loaded without a fusion stage.")
    feats = self.features(images)
    logits = self.fusion.predict("classify", {"features": self.fusion.task.assemble(feats)}, self.batch_size)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out = []
    for row in range(len(images)):
      best = int(np.argmax(probs[row]))
      out.append({"label": self.label_names[best], "probability": float(probs[row, best]),
                  "probabilities": {n: float(p) for n, p in zip(self.label_names, probs[row])},
                  "phrases": [(self.queries[int(q)], float(s))
                              for q, s in zip(feats["top_ids"][row], feats["top_scores"][row])]})
    return out

  def load_image_files(self, paths: Sequence[str]) -> np.ndarray:
    """Image files -> uint8 [N, s, s, 3] at the larger of the two readers' sizes: shorter side resized as the
    prepared data was, centre crop."""
    size = max(self.image_size, self.pixel_size)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for row, path in enumerate(paths):
      image = records.load_image(path)  # errors name the file and the fix
      out[row] = preprocess.center_crop(prepared.resize_shorter_side(image, self._resize_to[size]), size)
    return out
