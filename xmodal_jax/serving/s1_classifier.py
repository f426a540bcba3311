"""S1 for inference: the trained stages of a pipeline workdir composed into one image classifier.

image -> text generator -> top-N query phrases (nearest neighbours of x among the query vectors) -> mean of
their text embeddings (200-d, or MiniLM's 384-d) = the text feature; image -> pixel CNN bottleneck = the pixel
feature; [text; pixel] -> fusion classifier -> label. Used by the feature-extraction stage (without a fusion
stage) and by `xmodal classify`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import ml_collections
import numpy as np

from xmodal_jax.data import prepared, preprocess, records
from xmodal_jax.models.text_generator import TextGenerator
from xmodal_jax.serving import phrase_lookup
from xmodal_jax.train import pipeline


@dataclasses.dataclass
class _Stage:
  task: Any
  params: Any
  runtime: Any
  step: int


def _restore(config: ml_collections.ConfigDict, workdir: str, name: str, which: str) -> _Stage:
  from xmodal_jax.train import trainer  # noqa: PLC0415 (TensorFlow-importing modules stay lazy)
  path = pipeline.stage_dir(workdir, name)
  setup, step, params = trainer.restore_params(pipeline.stage_config(config, name), path, which)
  return _Stage(setup.task, params, setup.runtime, step)


class MultimodalClassifier:
  """Loads the stages named by the features stage `config.stages[features_stage]` (+ a fusion stage)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, features_stage: str = "features",
               fusion_stage: str | None = "fusion", mesh_shape: tuple[int, int] | None = None):
    """mesh_shape: run on this (data, model) mesh instead of the training one, e.g. (-1, 1) to serve on
    whatever devices this machine has."""
    if mesh_shape is not None:
      config = ml_collections.ConfigDict(config.to_dict())
      config.mesh.shape = tuple(mesh_shape)
    self.config = config
    spec = config.stages[features_stage]
    self.top_n, which = int(spec.top_n), spec.checkpoint
    self.generator = _restore(config, workdir, spec.generator, which)
    self.queries: list[str] = list(self.generator.task.queries)
    # W [K, 64]: the query vectors phrases are generated from (extended by `add_queries`).
    self.query_vectors = np.asarray(self.generator.task.model.apply(
        {"params": self.generator.params}, method=TextGenerator.query_table), np.float32)
    if spec.text_embedding == "minilm":
      from xmodal_jax.models import minilm  # noqa: PLC0415 (optional dependency)
      encoder = minilm.MiniLMEncoder.load()
      self.embed_phrases = encoder.embed
    else:
      text = _restore(config, workdir, spec.text_embedding, which)
      if text.task.queries != self.queries:
        raise ValueError(f"Stages {spec.generator!r} and {spec.text_embedding!r} built different query vocabularies "
                         "(different data configs?); re-run the pipeline from scratch.")
      self.embed_phrases = lambda phrases: text.task.embed_phrase_texts(text.params, phrases, text.runtime)
    self.query_table = self.embed_phrases(self.queries)  # text embedding of every query [K, Dt]
    self.pixel = _restore(config, workdir, spec.pixel, which)
    self.label_names = tuple(self.pixel.task.label_names)
    self.fusion = _restore(config, workdir, fusion_stage, "latest") if fusion_stage else None
    self.image_size = int(config.data.image_size)
    shapes = str(config.data.source).startswith("shapes")
    self.resize_to = self.image_size if shapes else max(self.image_size, int(config.data.prepare_size))

  def image_embeddings(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, size, size, 3] -> the text generator's x [N, 64]."""
    gen = self.generator
    return gen.runtime.map_batches(gen.task.embed_images, gen.params, {"images": images},
                                   gen.task.config.eval.batch_size)

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

  def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N, size, size, 3] -> {"text" [N, Dt], "pixel" [N, Dp], "top_ids" [N, n], "top_scores" [N, n]}."""
    scores, ids = (np.asarray(a) for a in phrase_lookup.top_queries(
        self.image_embeddings(images), self.query_vectors, self.top_n))
    pixel = self.pixel.runtime.map_batches(self.pixel.task.embed_images, self.pixel.params, {"images": images},
                                           self.pixel.task.config.eval.batch_size)
    return {"text": self.query_table[ids].mean(axis=1).astype(np.float32), "pixel": pixel.astype(np.float32),
            "top_ids": ids.astype(np.int32), "top_scores": scores.astype(np.float32)}

  def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
    """uint8 [N, size, size, 3] -> per image {"label", "probability", "phrases": [(phrase, score)], "probabilities"}."""
    if self.fusion is None:
      raise ValueError("This MultimodalClassifier was loaded without a fusion stage.")
    feats = self.features(images)
    fusion = self.fusion
    probs = fusion.runtime.map_batches(fusion.task.probabilities, fusion.params,
                                       {"features": fusion.task.assemble(feats)}, fusion.task.config.eval.batch_size)
    out = []
    for row in range(len(images)):
      best = int(np.argmax(probs[row]))
      out.append({"label": self.label_names[best], "probability": float(probs[row, best]),
                  "probabilities": {n: float(p) for n, p in zip(self.label_names, probs[row])},
                  "phrases": [(self.queries[int(q)], float(s))
                              for q, s in zip(feats["top_ids"][row], feats["top_scores"][row])]})
    return out

  def load_image_files(self, paths: Sequence[str]) -> np.ndarray:
    """Image files -> uint8 [N, size, size, 3]: shorter side resized as the prepared data was, centre crop."""
    out = np.empty((len(paths), self.image_size, self.image_size, 3), np.uint8)
    for row, path in enumerate(paths):
      image = records.load_image(path)  # errors name the file and the fix
      out[row] = preprocess.center_crop(prepared.resize_shorter_side(image, self.resize_to), self.image_size)
    return out
