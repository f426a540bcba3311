"""An S4 run (single_stream_vlp) used to caption images (`xmodal caption --workdir=RUN IMAGE ...`): its `caption`
predict function, iterative mask filling from raw images ([0072]; systems/single_stream/single_stream_task.py), with
the public surface of systems/captioning/image_captioner.py that the command line uses, so `xmodal caption`
dispatches on the run's config.task alone:

  config = read_captioning_config(W)                 # WorkdirError naming the fix for another kind of run
  captioner = ImageCaptioner.from_workdir(W)
  captions = captioner.caption(images)               # uint8 [n, S, S, 3] -> [[str]] (one caption per image)

Regions: photos have no boxes, so the images get the task's default regions (config.regions.grid's cells;
task_bases/frozen_tower_regions.py). Mask filling is deterministic and has one order (config.caption.order): there
is no --decode / --beam_size choice and one caption per image. `xmodal caption --all` (the caption database of
`xmodal search`) is S5's and is refused here with a message naming what works.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np

from xmodal_jax import errors, systems
from xmodal_jax.train import inference

TASK = "single_stream_vlp"
METHOD = "mask_filling"


@dataclasses.dataclass(frozen=True)
class MaskFilling:
  """The decode options of an S4 caption: mask filling in config.caption.order."""
  order: str
  method: str = METHOD


def read_captioning_config(workdir: str, command: str = "caption") -> ml_collections.ConfigDict:
  """The config.json of a single_stream_vlp run in `workdir` for `xmodal caption` (image files); WorkdirError for
  another kind of run, or another command (`caption --all`, `search`: S5's caption database)."""
  config = inference.read_run_config(workdir)
  if config.get("task") != TASK:
    raise errors.WorkdirError(f"{workdir} holds a {config.get('task')!r} run, not an S4 ({TASK}) run.")
  if command != "caption":
    raise errors.WorkdirError(f"`xmodal {command}` is not supported for S4 runs ({workdir} is a {TASK} run): it "
                              "builds or reads the caption database of an S5 captioning run (config.task="
                              "'captioning'). An S4 run captions image files: xmodal caption "
                              f"--workdir={workdir} IMAGE [IMAGE ...].")
  return config


class ImageCaptioner:
  """A loaded S4 run that captions uint8 images by mask filling (module docstring)."""

  def __init__(self, loaded: inference.LoadedModel):
    self.loaded = loaded
    self.task = loaded.task

  @classmethod
  def from_workdir(cls, workdir: str, *, which: str = "latest",
                   mesh_shape: Sequence[int] = (-1, 1)) -> "ImageCaptioner":
    config = read_captioning_config(workdir)
    return cls(inference.load_model(systems.create(config, workdir), which=which, mesh_shape=tuple(mesh_shape)))

  @property
  def step(self) -> int:
    return int(self.loaded.step)

  def decode_options(self, method: str | None = None, beam_size: int | None = None) -> MaskFilling:
    """The run's mask filling; `method` / `beam_size` (S5's --decode / --beam_size) are refused."""
    if method not in (None, METHOD) or beam_size is not None:
      raise errors.ConfigError(f"--decode / --beam_size choose S5's decoder; an S4 run captions by mask filling "
                               f"(config.caption.order={self.task.config.caption.order!r}): leave them out.")
    return MaskFilling(str(self.task.config.caption.order))

  def caption(self, images: np.ndarray, options: MaskFilling | None = None, *, captions_per_image: int = 1,
              batch_size: int = 64) -> list[list[str]]:
    """uint8 images [n, S, S, 3] -> n lists of one caption each."""
    del options  # one decoding: the run's config.caption.order
    if int(captions_per_image) != 1:
      raise errors.ConfigError(f"--captions_per_image={captions_per_image}: an S4 run's mask filling is "
                               "deterministic and gives one caption per image; leave it at 1.")
    if not len(images):
      return []
    tokens = self.loaded.predict("caption", self.task.image_predict_inputs(np.asarray(images)), batch_size)
    return [[caption] for caption in self.task.decode_text(np.asarray(tokens))]
