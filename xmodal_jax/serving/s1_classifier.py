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
from PIL import Image

from xmodal_jax.data import preprocess, records
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
    self.queries: list[str] = self.generator.task.queries
    if spec.text_embedding == "minilm":
      from xmodal_jax.models import minilm  # noqa: PLC0415 (optional dependency)
      self.query_table = minilm.MiniLMEncoder.load().embed(self.queries)
    else:
      text = _restore(config, workdir, spec.text_embedding, which)
      if text.task.queries != self.queries:
        raise ValueError(f"Stages {spec.generator!r} and {spec.text_embedding!r} built different query vocabularies "
                         "(different data configs?); re-run the pipeline from scratch.")
      self.query_table = text.task.query_embeddings(text.params, text.runtime)
    self.pixel = _restore(config, workdir, spec.pixel, which)
    self.label_names = tuple(self.pixel.task.label_names)
    self.fusion = _restore(config, workdir, fusion_stage, "latest") if fusion_stage else None
    self.image_size = int(config.data.image_size)
    shapes = str(config.data.source).startswith("shapes")
    self.resize_to = self.image_size if shapes else max(self.image_size, int(config.data.prepare_size))

  def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N, size, size, 3] -> {"text" [N, Dt], "pixel" [N, Dp], "top_ids" [N, n], "top_scores" [N, n]}."""
    gen = self.generator
    scores, ids = gen.task.generate(gen.params, images, gen.runtime, self.top_n)
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
      h, w = image.shape[:2]
      scale = self.resize_to / min(h, w)
      size = (max(self.resize_to, round(w * scale)), max(self.resize_to, round(h * scale)))
      image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
      out[row] = preprocess.center_crop(image, self.image_size)
    return out
