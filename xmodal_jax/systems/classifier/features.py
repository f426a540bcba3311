"""S1 stage 4 (a job, no training): text and pixel features of every image of the configured splits.

For each split, writes WORKDIR/<stage>/<split>.npz with text [N, Dt] (mean embedding of the top-N generated
phrases), pixel [N, Dp] (pixel embedding), labels int32 [N] (-1 = unlabelled), top_ids / top_scores [N, top_n]
(the generated phrases), image_ids [N], model_fold int32 [N] (the cross-fitting variant that made the row's
features; -1 = the one model set) and in_sample bool [N] (a model that made the row's features trained on that
image). The train split holds the labelled set only (the fusion classifier's rows; systems/classifier/partition.py).

Out-of-sample features: with config.partition.folds = K, the features of a labelled train image in fold j come
from the fold-j variants of the cross-fitted stages, which never trained on it, and evaluation image i from the
variants of fold i mod K. This is checked against the records the stages wrote (WORKDIR/<stage>/train_images.npz:
the image ids each trained on): an in-sample row is an error with cross-fitting, and counted in the report
without it (folds = 0, the earlier behaviour).

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

from xmodal_jax import errors, fileio
from xmodal_jax.data import taxonomy
from xmodal_jax.evaluation import tables
from xmodal_jax.systems.classifier import partition as partition_lib
from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
from xmodal_jax.systems.classifier.stage import TRAIN_IMAGES_FILE
from xmodal_jax.train import stages


def features_path(stage_workdir: str, split: str) -> str:
  return os.path.join(stage_workdir, f"{split}.npz")


def trained_on(config: ml_collections.ConfigDict, workdir: str, spec: ml_collections.ConfigDict,
               fold: int) -> dict[str, set[int]]:
  """{stage: image ids it trained on} for the stages whose variant `fold` (-1: no folds) makes features."""
  names = [spec.generator, spec.pixel] + ([] if spec.text_embedding == "minilm" else [spec.text_embedding])
  out = {}
  for name in names:
    variant = fold if stages.stage_folds(config, name) != [-1] else -1
    path = os.path.join(stages.stage_dir(workdir, name, variant), TRAIN_IMAGES_FILE)
    if not fileio.exists(path):
      raise errors.MissingError(f"{path} not found: stage {name!r} has no record of the images it trained on "
                                "(trained by an older version?); re-run the pipeline from scratch.")
    with fileio.load_npz(path) as record:
      out[os.path.basename(os.path.dirname(path))] = set(record["image_ids"].tolist())
  return out


def extract_features(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict:
  spec = config.stages[stage]
  out_dir = stages.stage_dir(workdir, stage)
  fileio.makedirs(out_dir)
  folds = stages.num_folds(config)
  variants = list(range(folds)) if folds else [-1]
  models = {v: MultimodalClassifier(config, workdir, features_stage=stage, fusion_stage=None,
                                    fold=None if v < 0 else v) for v in variants}
  first = models[variants[0]]
  task, pixel_task = first.generator.task, first.pixel.task  # read the splits (inference itself never does)
  records = {v: trained_on(config, workdir, spec, v) for v in variants}
  lines, counts = [], {}
  for split in spec.splits:
    start = time.time()
    data, notes, pixel_data = task.split(split), task.annotations(split), pixel_task.split(split)
    if not np.array_equal(data.image_ids, pixel_data.image_ids):
      raise errors.DataError(f"The {split} split read at the pixel stage's size lists other images than at "
                             f"config.data.image_size; delete the prepared copies of {config.data.source} and re-run.")
    if split == "train":
      part = partition_lib.train_partition(config.get("partition"), notes.labels)
      rows = part.labelled
      row_fold = part.fold[rows] if folds else np.full(len(rows), -1, np.int32)
    else:
      rows = np.arange(len(data), dtype=np.int64)
      row_fold = partition_lib.eval_folds(len(rows), folds) if folds else np.full(len(rows), -1, np.int32)
    parts, order = [], []
    for v in variants:
      chosen = rows[row_fold == v]
      order.append(chosen)
      for begin in range(0, len(chosen), spec.chunk):
        batch = chosen[begin:begin + spec.chunk]
        parts.append(models[v].features(data.load_images(batch, task.config.data.image_size),
                                        pixel_data.load_images(batch, pixel_task.data_config().image_size)))
    back = np.argsort(np.concatenate(order), kind="stable")  # model order -> row order
    feats = {k: np.concatenate([p[k] for p in parts])[back] for k in parts[0]}
    ids = np.asarray(data.image_ids)[rows]
    in_sample = np.zeros(len(rows), bool)
    for v in variants if split == "train" else ():  # stages train on the train split only
      seen = set().union(*records[v].values())
      in_sample |= (row_fold == v) & np.isin(ids, np.fromiter(seen, np.int64, len(seen)))
    if folds and in_sample.any():
      bad = int(np.flatnonzero(in_sample)[0])
      raise errors.WorkdirError(
          f"{split} image {ids[bad]}: its features would come from a model that trained on it (fold "
          f"{row_fold[bad]}); the cross-fitted stages' records disagree with config.partition. Re-run the "
          "pipeline from scratch.")
    feats.update(labels=notes.labels[rows].astype(np.int32), image_ids=ids, model_fold=row_fold,
                 in_sample=in_sample)
    if jax.process_index() == 0:
      fileio.save_npz(features_path(out_dir, split), **feats)
    counts[split] = len(rows)
    lines.append(f"{split}: {len(rows)} images ({int(np.sum(feats['labels'] >= 0))} labelled; "
                 f"{int(in_sample.sum())} with in-sample features"
                 f"{f', from {folds} cross-fitted model sets' if folds else ''}), text {feats['text'].shape[1]}-d, "
                 f"pixel {feats['pixel'].shape[1]}-d, {time.time() - start:.1f}s; "
                 f"e.g. {[first.queries[i] for i in feats['top_ids'][0]]}")
    logging.info("Features: %s", lines[-1])
    if in_sample.any():
      logging.warning("Features: %d %s rows have in-sample features (config.partition.folds=0): models that "
                      "made them trained on those images.", int(in_sample.sum()), split)
    lines.append(tables.format_distribution(taxonomy.class_distribution(feats["labels"], notes.label_names),
                                            header=f"{split} images"))
  return {"images": counts, "report": "\n".join(lines)}
