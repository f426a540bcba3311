"""A finished captioning run used to caption images (`xmodal caption`) and to build the caption database that
`xmodal search` and `xmodal serve --caption_db` read (serving/caption_search.py; seed FIG. 2-3).

  captioner = ImageCaptioner.from_workdir(W)                         # W: a `captioning` run (MLE or SCST)
  images = captioner.load_image_files(["a.jpg", "b.png"])           # as `xmodal classify` reads them
  captions = captioner.caption(images)                              # [[str]] one list per image, config.decode
  captions = captioner.caption(images, captioner.decode_options("beam", beam_size=5), captions_per_image=3)
  db = captioner.build_database("val")                              # every image of a split of the run's source
  db.save(os.path.join(W, "caption_db"))

Image files are decoded upright as RGB (records.load_image: missing or corrupt files are errors naming the file),
their shorter side resized (to the run's config.data.image_size on shapes, else to max(image_size,
data.prepare_size), as the prepared training data was) and centre-cropped to image_size.

Several captions per image (`captions_per_image` N > 1): the first is decoded by the decode options (the run's
config.decode unless overridden: greedy, beam or sample), the other N - 1 are sampled at temperature 1 (no top-k,
no nucleus cut), because beam search keeps only its best beam (systems/captioning/beam_search.py), so its top N is not
available. Sampling keys are fixed (seed 0, folded with the sample number and the batch's first row), so the same
command gives the same captions.

The database's embeddings come from the run's reward model (config.reward.workdir: a `clip` or S5 reward-model
run): image_embeddings of the split's images at the reward model's own image size and caption_embeddings of every
generated caption (an empty caption, an immediate <eos>, gets a zero row); none when config.reward.workdir is
empty. `embed_query` embeds a text query with the same text tower for `search_by_embedding`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from xmodal_jax import errors, progress, systems
from xmodal_jax.data.image_files import load_image_file
from xmodal_jax.serving import caption_search
from xmodal_jax.systems.captioning import scorers
from xmodal_jax.systems.captioning.captioner_task import DECODE_METHODS, DecodeOptions
from xmodal_jax.train import inference

TASK = "captioning"
SAMPLE_TEMPERATURE = 1.0   # the extra captions of captions_per_image > 1
SEED = 0                   # of the sampling keys
_CHUNK = 1024              # images loaded and captioned at once by build_database (a progress update each)


def read_captioning_config(workdir: str, command: str = "caption") -> ml_collections.ConfigDict:
  """The config.json of a `captioning` run in `workdir`; WorkdirError naming the fix for any other kind of run."""
  config = inference.read_run_config(workdir)
  if config.get("task") != TASK:
    what = f"a {config.task!r} run" if "task" in config else "a multi-stage pipeline run"
    raise errors.WorkdirError(f"{workdir} holds {what}, not a captioning run: `xmodal {command}` needs a workdir "
                              "trained with config.task='captioning' (e.g. xmodal train "
                              "--config=configs/captioning/captioner_shapes.py --workdir=W).")
  return config


def check_decode(method: str | None = None, beam_size: int | None = None) -> None:
  if method is not None and method not in DECODE_METHODS:
    raise errors.ConfigError(f"--decode={method!r} is not a decoding method; use one of {DECODE_METHODS}.")
  if beam_size is not None and int(beam_size) < 1:
    raise errors.ConfigError(f"--beam_size={beam_size}: at least 1.")


def image_names(data, count: int) -> list[str]:
  """The split's image names or paths where its source has them (`image_names` or `image_paths`), else ''."""
  for attribute in ("image_names", "image_paths"):
    names = getattr(data, attribute, None)
    if names is not None and len(names) == count:
      return [str(n) for n in names]
  return [""] * count


class ImageCaptioner:
  """A loaded captioning run (module docstring)."""

  def __init__(self, loaded: inference.LoadedModel, workdir: str, mesh_shape: Sequence[int] = (-1, 1)):
    self.loaded, self.workdir, self.mesh_shape = loaded, workdir, tuple(mesh_shape)
    self.task = loaded.task
    self.config = self.task.config
    self.image_size = int(self.config.data.image_size)
    self._fns: dict[DecodeOptions, Any] = {}
    self._reward: scorers.Scorer | None = None

  @classmethod
  def from_workdir(cls, workdir: str, *, which: str = "latest",
                   mesh_shape: Sequence[int] = (-1, 1)) -> "ImageCaptioner":
    config = read_captioning_config(workdir)
    loaded = inference.load_model(systems.create(config, workdir), which=which, mesh_shape=tuple(mesh_shape))
    return cls(loaded, workdir, mesh_shape)

  @property
  def step(self) -> int:
    return int(self.loaded.step)

  # ---- images
  def load_image_files(self, paths: Sequence[str]) -> np.ndarray:
    """Image files -> uint8 [n, size, size, 3] (`load_image_file`)."""
    out = np.empty((len(paths), self.image_size, self.image_size, 3), np.uint8)
    for row, path in enumerate(paths):
      out[row] = load_image_file(path, self.config.data)
    return out

  # ---- captions
  def decode_options(self, method: str | None = None, beam_size: int | None = None) -> DecodeOptions:
    """The run's config.decode, with `method` / `beam_size` replaced where given."""
    check_decode(method, beam_size)
    d = self.config.decode
    return DecodeOptions(str(method or d.method), int(beam_size or d.beam_size), float(d.alpha),
                         float(d.temperature), int(d.top_k), float(d.top_p))

  def _caption_fn(self, options: DecodeOptions):
    """(variables, images [b, S, S, 3], rows int32 [b], sample int32 [b]) -> tokens [b, max_len + 1]: one compiled
    function per options; the batch's sampling key folds SEED with sample[0] and rows[0]."""
    if options not in self._fns:
      task = self.task

      def fn(variables, images, rows, sample):
        v = task._captioner_variables(variables["params"], variables.get("frozen"))  # pylint: disable=protected-access
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(SEED), sample[0]), rows[0])
        return task.decode(v, task.encode_context(variables, images), options, key)

      self._fns[options] = fn
    return self._fns[options]

  def _tokens(self, images: np.ndarray, options: DecodeOptions, sample: int, first_row: int,
              batch_size: int) -> np.ndarray:
    n = len(images)
    inputs = {"images": images, "rows": np.arange(first_row, first_row + n, dtype=np.int32),
              "sample": np.full(n, sample, np.int32)}
    return self.loaded.runtime.map_batches(self._caption_fn(options), self.loaded.variables, inputs, batch_size)

  def caption(self, images: np.ndarray, options: DecodeOptions | None = None, *, captions_per_image: int = 1,
              batch_size: int = 64, first_row: int = 0) -> list[list[str]]:
    """uint8 images [n, S, S, 3] -> n lists of `captions_per_image` captions (module docstring): the first by
    `options` (default: the run's config.decode), the others sampled at temperature 1."""
    if int(captions_per_image) < 1:
      raise errors.ConfigError(f"--captions_per_image={captions_per_image}: at least 1.")
    if not len(images):
      return []
    options = options or self.decode_options()
    sampled = DecodeOptions("sample", temperature=SAMPLE_TEMPERATURE)
    rows = [self.task.decode_text(self._tokens(images, options, 0, first_row, batch_size))]
    for j in range(1, int(captions_per_image)):
      rows.append(self.task.decode_text(self._tokens(images, sampled, j, first_row, batch_size)))
    return [list(captions) for captions in zip(*rows)]

  # ---- the reward model's embeddings
  @property
  def reward_workdir(self) -> str:
    return str(self.config.reward.workdir or "")

  def reward_scorer(self) -> scorers.Scorer | None:
    """The run's reward model (config.reward.workdir), loaded once; None when the run names none."""
    if self._reward is None and self.reward_workdir:
      self._reward = scorers.load_scorer(self.reward_workdir, "config.reward.workdir",
                                         mesh_shape=self.mesh_shape)
    return self._reward

  # ---- the caption database
  def build_database(self, split: str = "val", options: DecodeOptions | None = None, *, captions_per_image: int = 1,
                     batch_size: int = 64) -> caption_search.CaptionDatabase:
    """Captions (and the reward model's embeddings) of every image of `split` of the run's data source."""
    options = options or self.decode_options()
    data = self.task.split(split)
    n = len(data)
    if not n:
      raise errors.DataError(f"split {split!r} of {self.config.data.source} has no images; nothing to caption.")
    start_time, captions = time.time(), []
    with progress.bar(n, f"Captioning {split} ({options.method})", unit="images") as bar:
      for start in range(0, n, _CHUNK):
        rows = np.arange(start, min(n, start + _CHUNK))
        images = data.load_images(rows, self.image_size)
        captions += self.caption(images, options, captions_per_image=captions_per_image, batch_size=batch_size,
                                 first_row=start)
        bar.update(len(rows))
    image_emb = caption_emb = None
    scorer = self.reward_scorer()
    if scorer is not None:
      logging.info("caption --all: embedding %d images and %d captions with %s", n,
                   sum(len(c) for c in captions), scorer.workdir)
      image_emb = scorer.embed_images(data, self.config.data, batch_size=batch_size)
      caption_emb = embed_texts(scorer, [c for cs in captions for c in cs], batch_size=batch_size)
    meta = {"workdir": self.workdir, "step": self.step, "split": split, "source": str(self.config.data.source),
            "decode": dataclasses.asdict(options), "captions_per_image": int(captions_per_image),
            "extra_captions": ({"method": "sample", "temperature": SAMPLE_TEMPERATURE, "seed": SEED}
                               if captions_per_image > 1 else None),
            "embed_workdir": scorer.workdir if scorer is not None else None,
            "embed_step": int(scorer.loaded.step) if scorer is not None else None,
            "seconds": round(time.time() - start_time, 1)}
    return caption_search.CaptionDatabase(
        image_ids=np.asarray(data.image_ids, np.int64), images=image_names(data, n), captions=captions,
        references=[list(c) for c in data.captions], image_embeddings=image_emb, caption_embeddings=caption_emb,
        meta=meta)


def embed_texts(scorer: scorers.Scorer, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
  """float32 [n, D] text embeddings under `scorer`; a text without a word (an empty caption) gets a zero row."""
  return scorer.embed_captions(list(texts), batch_size)


def embed_query(workdir: str, query: str, mesh_shape: Sequence[int] = (-1, 1)) -> np.ndarray:
  """A text query -> float32 [D] under the two-tower run in `workdir` (the caption database's embed model)."""
  if not scorers.has_words(query):
    raise errors.DataError(f"the query {query!r} has no words to embed; give a text such as 'a red circle'.")
  scorer = scorers.load_scorer(workdir, "the caption database's embed model (meta.embed_workdir)",
                               mesh_shape=tuple(mesh_shape))
  return embed_texts(scorer, [query])[0]
