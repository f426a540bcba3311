"""The `config.data` section: which source, image sizes and loading; captions' tokenizer fields for the tasks
that read captions (`caption_fields`)."""
from __future__ import annotations

from typing import Any

import ml_collections


def data_config(source: str, **fields: Any) -> ml_collections.ConfigDict:
  """The data section: source spec, image size, loading; `fields` add or override entries."""
  config = dict(
      source=source,       # shapes | folder:PATH | karpathy:JSON:IMAGE_ROOT | tfds:NAME[:CONFIG]
      seed=0,              # shapes world generator seed (fixed splits)
      num_train=30_000,    # shapes world sizes
      num_val=1_000,
      num_test=1_000,
      image_size=64,       # training/eval crop (shapes world: the generated size)
      flip=False,          # random horizontal flips in training
      num_threads=2,       # loader threads (grain)
      prefetch=4,          # batches loaded ahead
      prepare_size=64,     # real data: shorter side of the prepared images (>= image_size)
      prepared_dir="",     # real data: '' = ~/.cache/xmodal_jax/prepared/<source>
      tfds_data_dir="",    # tfds:NAME sources
      skip_bad=False,      # real data: skip (and count) bad records and captions instead of failing
      max_bad_fraction=0.01,       # ... but fail if more than this fraction of records (or captions) is bad
      allow_outside_paths=False)   # real data: image paths may point outside the dataset folder
  config.update(fields)
  return ml_collections.ConfigDict(config)


def caption_fields() -> dict[str, Any]:
  """Tokenizer fields of the data section, for tasks that encode captions."""
  return dict(
      max_len=40,          # tokens; longer captions are cut (with a warning and a count)
      tokenizer="word",    # word | sentencepiece (built on the train captions, saved in the workdir)
      vocab_min_count=1,   # word tokenizer
      vocab_size=8000)     # sentencepiece tokenizer
