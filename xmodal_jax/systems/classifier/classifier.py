"""S1 for inference: the trained stages of a pipeline workdir composed into one image classifier.

image -> text generator -> top-N query phrases (nearest neighbours of x among the query vectors) -> mean of
their text embeddings (200-d, or MiniLM's 384-d) = the text feature; image -> pixel CNN bottleneck = the pixel
feature; [text; pixel] -> fusion classifier -> label. Used by the features stage (without a fusion stage) and
by `xmodal classify`.

Every stage is loaded for inference from its own directory alone (`train/inference.py`): checkpoint params,
no optimiser state, the assets its training wrote (query vocabulary, n-gram vocabulary, input width). No data
source is read. Queries added to the run after training (`add_queries_to_run`, kept by `added_queries.py`) are
loaded after the trained ones, except by the features stage.

Serving beyond the label: `query_probabilities` (p(q | x) of seed eq. 1 over all K queries) and
`query_similarity` (images compared by the cosine of their p(q | x) vectors).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from xmodal_jax import errors, systems
from xmodal_jax.data import prepared, preprocess, records
from xmodal_jax.data.text import normalize_caption
from xmodal_jax.systems.classifier import added_queries, phrase_lookup
from xmodal_jax.systems.classifier.ngrams import NgramVocab
from xmodal_jax.train import inference, stages


def load_stage(config: ml_collections.ConfigDict, workdir: str, name: str, which: str = "latest",
               mesh_shape: Sequence[int] | None = None, fold: int | None = None) -> inference.LoadedModel:
  """Stage `name` of the pipeline `config` in `workdir`, loaded for inference: of a cross-fitted stage, the
  variant of `fold` (None: fold 0, the one serving uses); of any other stage, the one variant."""
  variants = stages.stage_folds(config, name)
  variant = -1 if variants == [-1] else (0 if fold is None else fold)
  task = systems.create(stages.stage_config(config, name, variant), stages.stage_dir(workdir, name, variant))
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
      self.ngrams: NgramVocab | None = None  # MiniLM embeds any phrase
    else:
      text = load_stage(config, workdir, spec.text_embedding, which, mesh_shape, fold)
      if text.task.queries != self.queries:
        raise errors.WorkdirError(f"Stages {spec.generator!r} and {spec.text_embedding!r} built different query vocabularies "
                         "(different data configs?); re-run the pipeline from scratch.")
      self.embed_phrases = lambda phrases: text.predict("embed_phrases", text.task.encode_phrases(phrases),
                                                        self.batch_size)
      self.ngrams = text.task.ngrams  # the siamese text model's n-gram vocabulary
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
    self._init_added_queries(workdir, spec, load=fusion_stage is not None)

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

  def add_queries(self, phrases: Sequence[str], images: Sequence[np.ndarray]) -> np.ndarray:
    """New queries without retraining (seed eq. 2): query c gets the prototype phi_c = mean of the normalised
    embeddings of its example images `images[c]` (uint8 [n_c, size, size, 3]); its text embedding comes from
    the text model. Existing query ids are unchanged. In memory only (`add_queries_to_run` keeps them).
    Returns the prototypes [C, 64]."""
    if len(phrases) != len(images):
      raise ValueError(f"add_queries: {len(phrases)} phrases but {len(images)} image sets.")
    self._check_new_phrases(phrases)
    if any(len(batch) == 0 for batch in images):
      raise errors.DataError("add_queries: every new phrase needs at least one example image.")
    prototypes = self._prototypes(images)
    self._extend(phrases, prototypes)
    return prototypes

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

  def classify(self, images: np.ndarray, top_queries: int = 0) -> list[dict[str, Any]]:
    """uint8 [N, size, size, 3] -> per image {"label", "probability", "phrases": [(phrase, score)], "probabilities"}.

    top_queries > 0 adds "queries": the `top_queries` most probable queries under p(q | x) (seed eq. 1, over all
    K queries), each {"query", "id", "p", "cosine"}, most probable first, and "num_queries" (K)."""
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
    if top_queries > 0:
      self._add_top_queries(out, self.query_probabilities(images, top_queries))
    return out

  def _add_top_queries(self, rows: list[dict[str, Any]], top: dict[str, np.ndarray]) -> None:
    for row, ids, probs, cosines in zip(rows, top["ids"], top["probabilities"], top["cosines"]):
      row["queries"] = [{"query": self.queries[int(q)], "id": int(q), "p": float(p), "cosine": float(c)}
                        for q, p, c in zip(ids, probs, cosines)]
      row["num_queries"] = len(self.queries)

  def load_image_files(self, paths: Sequence[str]) -> np.ndarray:
    """Image files -> uint8 [N, s, s, 3] at the larger of the two readers' sizes: shorter side resized as the
    prepared data was, centre crop."""
    size = max(self.image_size, self.pixel_size)
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for row, path in enumerate(paths):
      image = records.load_image(path)  # errors name the file and the fix
      out[row] = preprocess.center_crop(prepared.resize_shorter_side(image, self._resize_to[size]), size)
    return out

  # ---- p(q | x) over all queries, query-space similarity, queries added to the run (systems/classifier/added_queries.py)

  @property
  def query_scale(self) -> float:
    """s of seed eq. 1, p(q_c | x) = softmax_c(-s d(x, w_c)): the text generator's `loss.scale`."""
    return float(self.generator.task.config.loss.scale)

  def query_probabilities(self, images: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """uint8 [N, size, size, 3] -> the k most probable queries under p(q | x) (normalised over all K queries,
    the added ones included), most probable first: {"ids" int32 [N, k], "probabilities" [N, k], "cosines" [N, k]}.
    k >= K gives the whole distribution."""
    k = min(int(k), len(self.queries))
    x = self.image_embeddings(images)
    w = jax.numpy.asarray(self.query_vectors)  # one transfer per call, not per batch
    parts = [phrase_lookup.top_query_probabilities(x[i:i + self.batch_size], w, k, self.query_scale)
             for i in range(0, len(x), self.batch_size)]
    probs, cosines, ids = (np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(3))
    return {"ids": ids.astype(np.int32), "probabilities": probs.astype(np.float32),
            "cosines": cosines.astype(np.float32)}

  def query_similarity(self, images_a: np.ndarray, images_b: np.ndarray | None = None) -> np.ndarray:
    """Image-image similarity in query space: the cosine of the images' p(q | x) vectors over all K queries,
    [Na, Nb] (images_b None: images_a against themselves). 1 = the same distribution over queries; two images
    are similar when the same queries are probable for both (dominated by the most probable queries: p is
    squared in the norms). Never materialises [N, K] (`phrase_lookup.query_space_similarity`)."""
    x_a = self.image_embeddings(images_a)
    x_b = x_a if images_b is None else self.image_embeddings(images_b)
    return phrase_lookup.query_space_similarity(x_a, x_b, self.query_vectors, self.query_scale)

  def add_queries_to_run(self, requests: Sequence[added_queries.Request]) -> list[int]:
    """Adds the requested queries (`added_queries.read_request`) and writes them into the run, so that every
    later MultimodalClassifier on it has them. Returns their ids. Bad images or phrases are UserErrors naming
    the request entry; nothing is written unless every request is good."""
    phrases = [r.phrase for r in requests]
    self._check_new_phrases(phrases, where={r.phrase: r.where for r in requests})
    images = []
    for request in requests:
      try:
        images.append(self.load_image_files(request.images))
      except errors.UserError as e:
        raise errors.DataError(f"{request.where}: phrase {request.phrase!r}: {e}") from None
    trained = self.queries[:self._num_trained]
    signature = added_queries.generator_signature(self.query_vectors[:self._num_trained])
    stored = added_queries.append(self.workdir, phrases, self._prototypes(images), [r.images for r in requests],
                                  signature, trained)
    self._apply_added(stored)  # the run's added queries (with any another process added meanwhile)
    return [self.queries.index(p) for p in phrases]

  def _init_added_queries(self, workdir: str, spec: ml_collections.ConfigDict, load: bool) -> None:
    """End of __init__: remembers the run and appends the queries added to it. The features stage (no fusion
    stage, `load` False) sees the trained queries only, so training never depends on queries added later."""
    self.workdir = workdir
    self._num_trained = len(self.queries)
    if load:
      stored = added_queries.load(workdir)
      if stored is not None:
        self._apply_added(stored)

  def _apply_added(self, stored: added_queries.AddedQueries) -> None:
    """Sets the added queries to `stored` (those of the run), after the trained ones."""
    added_queries.check_generator(stored, added_queries.generator_signature(self.query_vectors[:self._num_trained]),
                                  self.workdir)
    k = self._num_trained
    self.queries, self.query_vectors, self.query_table = (
        self.queries[:k], self.query_vectors[:k], self.query_table[:k])
    self._extend(stored.phrases, stored.prototypes)

  def _prototypes(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Seed eq. 2 for C image sets (uint8 [n_c, size, size, 3] each) -> prototypes [C, 64] float32."""
    feats = self.image_embeddings(np.concatenate(images))
    owner = np.repeat(np.arange(len(images)), [len(batch) for batch in images])
    members = owner[None, :] == np.arange(len(images))[:, None]
    return np.asarray(phrase_lookup.class_prototypes(feats, members), np.float32)

  def _extend(self, phrases: Sequence[str], prototypes: np.ndarray) -> None:
    self.query_vectors = np.asarray(phrase_lookup.extend_queries(self.query_vectors, prototypes), np.float32)
    self.query_table = np.concatenate([self.query_table, self.embed_phrases(list(phrases))]).astype(np.float32)
    self.queries += list(phrases)

  def _check_new_phrases(self, phrases: Sequence[str], where: dict[str, str] | None = None) -> None:
    """New phrases must be new (after text normalisation) and embeddable: with the siamese text model at least one
    of a phrase's words (n-grams) must be known, else its embedding would be the unknown n-gram's alone."""
    where = where or {}
    ngrams = self.ngrams
    existing = {normalize_caption(q): q for q in self.queries}
    seen: dict[str, str] = {}
    for phrase in phrases:
      at = f"{where[phrase]}: " if phrase in where else ""
      if not isinstance(phrase, str) or not any(c.isalnum() for c in phrase):
        raise errors.DataError(f"{at}new query phrase {phrase!r} is empty or has no letters or digits.")
      norm = normalize_caption(phrase)
      if norm in existing:
        raise errors.DataError(f"{at}phrase {phrase!r} is already in the vocabulary (as {existing[norm]!r}); "
                               "choose another phrase: an existing query cannot be added again.")
      if norm in seen:
        raise errors.DataError(f"{at}phrase {phrase!r} is repeated (as {seen[norm]!r}); give each new phrase once.")
      seen[norm] = phrase
      if ngrams is not None and not ngrams.known_ids(phrase):
        raise errors.DataError(
            f"{at}none of the words of {phrase!r} was seen by the siamese text embedding, so it has no text "
            "embedding (only the unknown n-gram's). Use a phrase with at least one known word (any trained query's "
            "words), or serve with pretrained MiniLM text features (--config.stages.features.text_embedding=minilm, "
            "then re-run the features and fusion stages).")
