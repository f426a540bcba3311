"""S1 stage 4 (a job, no training): text and pixel features of every image of the configured splits.

For each split, writes WORKDIR/<stage>/<split>.npz with text [N, Dt] (mean embedding of the top-N generated
phrases), pixel [N, Dp] (pixel CNN bottleneck), labels int32 [N] (-1 = unlabelled), top_ids / top_scores
[N, top_n] (the generated phrases) and image_ids [N]. The fusion stages train on these files.

Config (config.stages.<stage>): job="s1_features", splits, generator / text_embedding / pixel (stage names;
text_embedding="minilm" uses the pretrained MiniLM port instead of the siamese model), top_n (3),
checkpoint ("latest" | "best"), chunk (images decoded at a time).
"""
from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from xmodal_jax.data import taxonomy
from xmodal_jax.tasks.s1.classifier import MultimodalClassifier
from xmodal_jax.train import stages


def features_path(stage_workdir: str, split: str) -> str:
  return os.path.join(stage_workdir, f"{split}.npz")


def extract_features(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict:
  spec = config.stages[stage]
  out_dir = stages.stage_dir(workdir, stage)
  os.makedirs(out_dir, exist_ok=True)
  model = MultimodalClassifier(config, workdir, features_stage=stage, fusion_stage=None)
  task = model.generator.task  # reads the splits (the inference path itself never does)
  lines, counts = [], {}
  for split in spec.splits:
    start = time.time()
    data, notes = task.split(split), task.annotations(split)
    parts = []
    for begin in range(0, len(data), spec.chunk):
      images = data.load_images(np.arange(begin, min(begin + spec.chunk, len(data))), task.config.data.image_size)
      parts.append(model.features(images))
    feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    feats.update(labels=notes.labels.astype(np.int32), image_ids=np.asarray(data.image_ids))
    if jax.process_index() == 0:
      np.savez(features_path(out_dir, split), **feats)
    counts[split] = len(data)
    lines.append(f"{split}: {len(data)} images ({int(np.sum(notes.labels >= 0))} labelled), text "
                 f"{feats['text'].shape[1]}-d, pixel {feats['pixel'].shape[1]}-d, {time.time() - start:.1f}s; "
                 f"e.g. {[model.queries[i] for i in feats['top_ids'][0]]}")
    logging.info("Features: %s", lines[-1])
    lines.append(taxonomy.format_distribution(taxonomy.class_distribution(notes.labels, notes.label_names),
                                              header=f"{split} images"))
  return {"images": counts, "report": "\n".join(lines)}
