r"""`xmodal export`: a trained run's embeddings of one split (or of a folder of photos), and its encoders for serving.

  xmodal export --workdir=RUN --out=DIR [--split=val] [--source=folder:PATH] [--what=images,texts]
                [--checkpoint=latest|best] [--shard_size=1000] [--export_dtype=float32] [--noexport_encoders]
  xmodal export --workdir=RUN --out=DIR --images=PHOTOS      # every JPEG / PNG / WebP under PHOTOS, no captions

  export_run(systems.run_task(RUN, source=...), DIR, split="val", ...)    # the same from Python
  export_run(systems.run_task(RUN), DIR, images_dir=PHOTOS)

Restores the run's params only (the spine's inference loading: `train/inference.py`), encodes the inputs under
the mesh with the run's predict functions from raw inputs (`task.image_predict_inputs(images, split, rows)` ->
`embed_image`; tokens -> `embed_text`) and writes the format of `serving/embedding_export.py` (beside this module)
to DIR, plus the encoders as StableHLO (`serving/exported_encoder.py`). Every retrieval-capable run exports:
VSE++, the dual encoder, CLIP / SigLIP, mFSR, S2 region-word and S4 single-stream. A pairwise run
(`task.has_pairwise_scoring`: S2, S4) also exports each item's pair set (`pair_image` / `pair_text` outputs, the
inputs of its `score_pairs`) in "K-pairs-..." shards for re-ranking an ANN shortlist (`serve --rerank=K`), and
its `pair_image` / `pair_text` / `score_pairs` programs.

* A folder (`images_dir`): its files are listed recursively and decoded like the run's data
  (`serving/image_folder.py`); unusable files are skipped, named on stderr and listed in the manifest's
  "skipped" (an error only when none is usable); items keep the file's relative "path". Images only.
* Resumable: a shard is the unit of work; finished shards (record + matching sha256) are kept after a kill and
  only missing or damaged ones are encoded again.
* Idempotent: a second run with the same inputs (run step, config, source and split or folder and the
  fingerprint of its file list, kinds, shard size, dtype) finds every shard intact and writes nothing. Other
  inputs in a DIR that holds an export are refused (--overwrite replaces it).
* Multi-host (`--multihost`): every process encodes every pending shard together (the batch is sharded over all
  devices) and shard i is written by process i % process_count; DIR must be a filesystem all hosts share (NFS,
  gcsfuse); process 0 writes the item lists, the encoders and the manifest.

It takes the run's task, which the caller resolves from the run's workdir (`systems.run_task`, as `xmodal export`
does): like the trainer, serving never imports a system.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from xmodal_jax import disk_space, errors, progress
from xmodal_jax.data import tokenizers
from xmodal_jax.serving import embedding_export as fmt
from xmodal_jax.serving import exported_encoder, image_folder
from xmodal_jax.train import inference
from xmodal_jax.train import workdir as workdir_lib

EXPORT_KEY = "export.json"   # the inputs of the export in DIR, written first (the manifest is written last)
DTYPES = ("float32", "float16")


def _config_sha256(workdir: str) -> str:
  with open(os.path.join(workdir, workdir_lib.CONFIG_FILE), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _check_key(out_dir: str, key: dict[str, Any], overwrite: bool) -> None:
  """Refuses a DIR holding an export of other inputs (or clears it with overwrite); writes the key otherwise."""
  path = os.path.join(out_dir, EXPORT_KEY)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != key:
      if not overwrite:
        changed = sorted(k for k in set(previous) | set(key) if previous.get(k) != key.get(k))
        raise errors.WorkdirError(
            f"{out_dir} holds an export of other inputs (differing: {', '.join(changed)}; e.g. {changed[0]}: "
            f"{previous.get(changed[0])!r} there, {key.get(changed[0])!r} now). Use another --out, or pass "
            "--overwrite to replace it.")
      _clear(out_dir)
  elif os.listdir(out_dir) != [workdir_lib.LOCK_FILE] and os.listdir(out_dir) and not overwrite:
    raise errors.WorkdirError(f"{out_dir} is not empty and holds no xmodal export; use an empty or new --out "
                              "(or --overwrite to delete its export files).")
  if not os.path.exists(path):
    fmt.write_json_atomic(path, key)


_TEMPORARY = re.compile(r"\.tmp-(\d+)(\.npz|\.ids\.npy)?$")  # what an atomic write leaves behind a kill


def _remove_temporaries(out_dir: str) -> list[str]:
  """Deletes the temporary files (and encoder.tmp-PID folders) that a killed export left in DIR and DIR/images;
  called under DIR's lock, so no other export is writing them. Returns the names removed."""
  removed = []
  for folder in (out_dir, os.path.join(out_dir, "images")):
    if not os.path.isdir(folder):
      continue
    for name in os.listdir(folder):
      match = _TEMPORARY.search(name)
      if not match or int(match.group(1)) == os.getpid():
        continue
      path = os.path.join(folder, name)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
      removed.append(os.path.relpath(path, out_dir))
  if removed:
    logging.info("export: removed %d temporary file(s) left by an interrupted export (%s).", len(removed),
                 ", ".join(removed[:5]))
  return removed


def _clear(out_dir: str) -> None:
  """Deletes what an export writes in DIR (only those files)."""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if name in ("images", exported_encoder.ENCODER_DIR) and os.path.isdir(path):
      shutil.rmtree(path)
    elif name.startswith(fmt.KINDS) or name in (fmt.MANIFEST, EXPORT_KEY):
      os.remove(path)


class _SplitRows:
  """The rows of one kind of one split: count, and per range of rows the ids and predict inputs."""

  def __init__(self, task, split: str, kind: str):
    self.task, self.kind, self.split = task, kind, split
    self.data = task.split(split)
    if kind == "images":
      self.ids = np.asarray(self.data.image_ids, np.int64)
      self.defaults = _default_image_extras(task)
    else:
      self.tokens = task.tokens(split)
      self.ids = np.arange(len(self.tokens.tokens), dtype=np.int64)

  def __len__(self) -> int:
    return len(self.ids)

  def load(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None, list]:
    """-> (ids [n], predict inputs, uint8 images [n, S, S, 3] or None, skipped [])."""
    if self.kind == "images":
      rows = np.arange(start, stop)
      images = self.data.load_images(rows, self.task.data_config().image_size)
      inputs = _padded_like(_image_inputs(self.task, images, self.split, rows), self.defaults)
      return self.ids[start:stop], inputs, images, []
    tokens = {"tokens": self.tokens.tokens[start:stop], "mask": self.tokens.mask[start:stop]}
    return self.ids[start:stop], tokens, None, []

  def items(self, ids: np.ndarray) -> list[dict[str, Any]]:
    del ids  # every row is exported
    if self.kind == "images":
      return [{"id": int(i), "file": f"images/{int(i)}.jpg", "captions": list(caps)}
              for i, caps in zip(self.ids, self.data.captions)]
    flat = [c for caps in self.data.captions for c in caps]
    return [{"id": int(row), "image_id": int(self.data.image_ids[owner]), "text": text}
            for row, (owner, text) in enumerate(zip(self.tokens.text_to_image, flat))]


class _FolderRows:
  """The images of a folder (`image_folder.ImageFolder`): a row is a file; its id is its position in the list."""

  def __init__(self, task, folder: image_folder.ImageFolder):
    self.task, self.folder, self.kind = task, folder, "images"
    self.size = int(task.data_config().image_size)

  def __len__(self) -> int:
    return len(self.folder)

  def load(self, start: int, stop: int) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None, list]:
    images, ids, skipped = self.folder.load(range(start, stop), self.task.data_config())
    for bad in skipped:
      print(f"xmodal export: skipped {bad['reason']}", file=sys.stderr, flush=True)
    return ids, _image_inputs(self.task, images, None, None), images, skipped

  def items(self, ids: np.ndarray) -> list[dict[str, Any]]:
    return [{"id": int(i), "file": f"images/{int(i)}.jpg", "path": self.folder.files[int(i)], "captions": []}
            for i in ids]


def _image_inputs(task, images: np.ndarray, split: str | None, rows: np.ndarray | None) -> dict[str, Any]:
  """The kwargs of the task's embed_image / pair_image for uint8 images [n, S, S, 3] (split rows: the data's regions
  where it has them; split None: the task's default regions)."""
  return task.image_predict_inputs(images, split=split, rows=rows)


def _default_image_extras(task) -> dict[str, np.ndarray]:
  """The image inputs besides "images" that the task gives an image without a split (its default regions), one
  row: the same for every image, so the exported image programs hold them as constants."""
  size = int(task.data_config().image_size)
  blank = np.stack([np.zeros([size, size, 3], np.uint8), np.full([size, size, 3], 255, np.uint8)])
  extras = {k: np.asarray(v) for k, v in _image_inputs(task, blank, None, None).items() if k != "images"}
  varying = [k for k, v in extras.items() if not np.array_equal(v[0], v[1])]
  if varying:
    raise errors.ConfigError(f"{type(task).__name__}.image_predict_inputs gives inputs that depend on the image "
                             f"({', '.join(varying)}) outside the predict function; the encoders cannot be exported "
                             "(export with --noexport_encoders).")
  return {k: v[0] for k, v in extras.items()}


def _padded_like(inputs: dict[str, Any], defaults: dict[str, np.ndarray]) -> dict[str, Any]:
  """A split's per-region image inputs (boxes [n, r, 4], region_mask [n, r], label_tokens [n, r, ...]) padded with
  zeros (masked regions) to the region count of the default regions (`_default_image_extras`), so that every
  image pair set of a run has one shape, the one the exported pair_image / score_pairs programs have. Masked
  regions do not change a score (S2, S4: tests/test_serving_systems.py compares with the unpadded library)."""
  out = dict(inputs)
  for name, default in defaults.items():
    value = np.asarray(inputs.get(name)) if name in inputs else None
    if value is None or value.ndim < 2 or value.shape[2:] != default.shape[1:] or value.shape[1] >= default.shape[0]:
      continue
    pad = [(0, 0), (0, default.shape[0] - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
    out[name] = np.pad(value, pad)
  return out


def _write_images(out_dir: str, ids: np.ndarray, images: np.ndarray) -> None:
  """images/<id>.jpg of each exported image (the centre crop the model saw), each written atomically."""
  folder = os.path.join(out_dir, "images")
  os.makedirs(folder, exist_ok=True)
  for image_id, image in zip(ids, images):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    tmp = os.path.join(folder, f".{int(image_id)}.jpg.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
      f.write(buffer.getvalue())
    os.replace(tmp, os.path.join(folder, f"{int(image_id)}.jpg"))


def _shard_done(out_dir: str, kind: str, index: int, bounds: list[tuple[int, int]], pairs: bool) -> bool:
  done = fmt.finished_shard(out_dir, kind, index, len(bounds), bounds[index]) is not None
  if pairs:
    done = fmt.finished_shard(out_dir, fmt.pairs_kind(kind), index, len(bounds), bounds[index]) is not None and done
  return done


def _pending(out_dir: str, kind: str, bounds: list[tuple[int, int]], pairs: bool) -> list[int]:
  """Shards of `kind` not finished (vectors, and pair sets of a pairwise run), agreed by all processes (each
  checks the shards it writes)."""
  me, count = jax.process_index(), jax.process_count()
  missing = np.array([i % count == me and not _shard_done(out_dir, kind, i, bounds, pairs)
                      for i in range(len(bounds))], np.int32)
  if count > 1:
    missing = np.asarray(multihost_utils.process_allgather(missing)).max(axis=0)
  return [i for i, m in enumerate(missing) if m]


def _records(out_dir: str, kind: str, bounds: list[tuple[int, int]]) -> list[dict[str, Any]]:
  records = [fmt.finished_shard(out_dir, kind, i, len(bounds), b) for i, b in enumerate(bounds)]
  if any(r is None for r in records):
    raise errors.DataError(f"{out_dir}: shards of {kind} are missing after the export; with --multihost the "
                           "--out directory must be shared by all hosts.")
  return records


def _stored(arrays: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
  """Floating arrays in the export dtype; the others (masks, ids) as they are."""
  return {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}


def _encode(model, rows, kind: str, start: int, stop: int, batch_size: int, pairs: bool):
  """One shard's rows encoded -> (ids, images or None, skipped, vectors [n, dim], pair sets {name: [n, ...]} or
  None). A range without a usable input (a folder's bad files) gives empty arrays of the right shapes."""
  ids, inputs, images, skipped = rows.load(start, stop)
  empty = len(ids) == 0
  if empty:  # shapes of the outputs from one blank row, then none kept
    blank = np.zeros([1, rows.size, rows.size, 3], np.uint8)
    inputs = _image_inputs(rows.task, blank, None, None)
  name = kind[:-1]
  vectors = model.predict(f"embed_{name}", inputs, batch_size=batch_size)
  pair_sets = model.predict(f"pair_{name}", inputs, batch_size=batch_size) if pairs else None
  if empty:
    vectors = vectors[:0]
    pair_sets = None if pair_sets is None else {k: v[:0] for k, v in pair_sets.items()}
  return ids, images, skipped, np.asarray(vectors), pair_sets


def export_run(task, out_dir: str, *, split: str = "val", images_dir: str | None = None,
               what: Sequence[str] | None = None, which: str = "latest", shard_size: int = 1000,
               dtype: str = "float32", encoders: bool = True, overwrite: bool = False, batch_size: int = 256,
               mesh_shape: Sequence[int] = (-1, 1)) -> dict[str, Any]:
  """Exports `split` of the run of `task` (a task of a trained run, working in its workdir: `systems.run_task`) to
  `out_dir`, or with `images_dir` every image file under that folder (split unused); returns a summary
  {"out", "step", "written": {kind: shards}, "kept": {kind: shards}, "encoders", "seconds"[, "skipped": files]}.

  what: the kinds, ("images", "texts") by default; ("images",) (the default) for a folder, which has no captions.
  """
  available = ("images",) if images_dir else fmt.KINDS
  what = tuple(dict.fromkeys(what if what is not None else available))
  bad = [k for k in what if k not in fmt.KINDS]
  if bad or not what:
    raise errors.ConfigError(f"--what={','.join(what)}: choose from {','.join(available)}.")
  if images_dir and "texts" in what:
    raise errors.ConfigError(f"--what={','.join(what)}: a folder of images (--images={images_dir}) has no captions, "
                             "so there are no texts to export; use --what=images (the default with --images).")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"--export_dtype={dtype}: choose float32 or float16.")
  if shard_size < 1:
    raise errors.ConfigError(f"--shard_size={shard_size}: must be >= 1.")
  config, workdir = task.config, task.workdir
  folder = image_folder.ImageFolder(images_dir) if images_dir else None  # before loading: a bad path fails fast
  t0 = time.time()
  model = inference.load_model(task, which=which, mesh_shape=mesh_shape)
  fns = task.predict_fns()
  if not {"embed_image", "embed_text"} <= set(fns):
    raise errors.ConfigError(f"The run in {workdir} is a {config.task!r} run, whose task has no embed_image / "
                             "embed_text predict functions; export works on retrieval and CLIP runs.")
  pairs = bool(task.has_pairwise_scoring)
  key = {"workdir": os.path.abspath(workdir), "step": model.step, "checkpoint": which,
         "config_sha256": _config_sha256(workdir), "kinds": list(what), "shard_size": int(shard_size), "dtype": dtype}
  if folder is not None:
    key.update(images_dir=folder.root, images_fingerprint=folder.fingerprint())
  else:
    key.update(source=str(config.data.source), split=split)
  os.makedirs(out_dir, exist_ok=True)
  lead = jax.process_index() == 0
  with workdir_lib.WorkdirLock(out_dir, enabled=lead), disk_space.full_disk_is_an_error(
      out_dir, f"exporting {workdir}", fix="Free some space, or pass another --out; what was written is kept, and the same command resumes."):
    if lead:
      _check_key(out_dir, key, overwrite)
      _remove_temporaries(out_dir)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("xmodal_export_key")
    summary = {"out": out_dir, "step": model.step, "written": {}, "kept": {}}
    manifest_kinds, max_norm_error, skipped = {}, 0.0, []
    for kind in what:
      rows = _FolderRows(task, folder) if folder is not None else _SplitRows(task, split, kind)
      n = len(rows)
      bounds = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
      pending = _pending(out_dir, kind, bounds, pairs)
      summary["written"][kind], summary["kept"][kind] = len(pending), len(bounds) - len(pending)
      logging.info("export %s: %d rows in %d shards, %d to encode (%d kept).", kind, n, len(bounds), len(pending),
                   len(bounds) - len(pending))
      with progress.bar(sum(bounds[i][1] - bounds[i][0] for i in pending), f"Exporting {kind}", unit=kind) as bar:
        for index in pending:
          start, stop = bounds[index]
          ids, images, bad_files, vectors, pair_sets = _encode(model, rows, kind, start, stop, batch_size, pairs)
          if len(vectors):
            max_norm_error = max(max_norm_error, float(np.abs(np.linalg.norm(vectors, axis=-1) - 1).max()))
          if index % jax.process_count() == jax.process_index():
            summary.setdefault("mine", {}).setdefault(kind, []).append(index)
            if images is not None:
              _write_images(out_dir, ids, images)
            if pairs:
              fmt.write_pair_shard(out_dir, kind, index, len(bounds), (start, stop), ids, _stored(pair_sets, dtype),
                                   bad_files)
            fmt.write_shard(out_dir, kind, index, len(bounds), (start, stop), ids, vectors.astype(dtype), bad_files)
          bar.update(stop - start)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"xmodal_export_{kind}")
      if not lead:
        continue
      records = _records(out_dir, kind, bounds)
      kept_ids = _shard_ids(out_dir, records)
      skipped += [s for r in records for s in r.get("skipped", ())]
      if folder is not None and not len(kept_ids):
        raise errors.DataError(f"--images={images_dir}: none of its {n} image files could be read ("
                               f"{'; '.join(s['reason'] for s in skipped[:3])}{' ...' if n > 3 else ''}); check "
                               "that they are JPEG / PNG / WebP photos.")
      manifest_kinds[kind] = {"count": int(len(kept_ids)), "shards": records, "items": f"{kind}.jsonl"}
      if pairs:
        manifest_kinds[kind]["pairs"] = _pairs_entry(out_dir, kind, bounds, model, task, dtype)
      _write_items(out_dir, kind, rows.items(kept_ids))
    # The encoders' weights on the host: a collective when the run's arrays span several processes.
    host_variables = _host_variables(model.variables) if encoders else None
    if lead:
      dim = _dim(out_dir, manifest_kinds)
      summary["encoders"] = (_ensure_encoders(out_dir, task, model, config, host_variables, dim, pairs) if encoders
                             else "not exported")
      if pairs and encoders:
        _check_pair_shapes(manifest_kinds, exported_encoder.read_encoder_info(out_dir))
      manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, **key,
                  "dim": int(dim), "normalized": True, "kinds": manifest_kinds, "pairs": pairs,
                  "image_size": int(task.data_config().image_size), "max_len": int(config.data.max_len)}
      if folder is not None:
        manifest["skipped"] = skipped
        summary["skipped"] = len(skipped)
        if skipped:
          print(f"xmodal export: skipped {len(skipped)} of {len(folder)} image files under {folder.root} (listed in "
                f"{os.path.join(out_dir, fmt.MANIFEST)} \"skipped\").", file=sys.stderr, flush=True)
      if max_norm_error > 1e-2:
        manifest["normalized"] = False
      _write_if_changed(os.path.join(out_dir, fmt.MANIFEST), manifest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("xmodal_export_done")
  summary["seconds"] = round(time.time() - t0, 1)
  return summary


def _shard_ids(out_dir: str, records: list[dict[str, Any]]) -> np.ndarray:
  """The ids of the finished shards `records`, concatenated: the export's order (positions)."""
  ids = []
  for record in records:
    with np.load(os.path.join(out_dir, record["file"]), allow_pickle=False) as data:
      ids.append(data["ids"])
  return np.concatenate(ids) if ids else np.zeros([0], np.int64)


def _pair_output_shapes(model, task, kind: str) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of pair_image / pair_text of one input without a split (default regions; caption "a")."""
  if kind == "images":
    size = int(task.data_config().image_size)
    inputs = _image_inputs(task, np.zeros([1, size, size, 3], np.uint8), None, None)
  else:
    inputs = dict(task.encode_texts(["a"]))
  fn = task.predict_fns()[f"pair_{kind[:-1]}"]
  return jax.eval_shape(lambda v, b: fn(v, **b), model.variables, inputs)


def _pairs_entry(out_dir: str, kind: str, bounds, model, task, dtype: str) -> dict[str, Any]:
  """The manifest's "pairs" entry of `kind`: its pair-set shards, and each array's per-item shape (as stored: the
  first non-empty shard's) and dtype (as computed, before the export dtype)."""
  records = _records(out_dir, fmt.pairs_kind(kind), bounds)
  computed = _pair_output_shapes(model, task, kind)
  shapes = {k: list(v.shape[1:]) for k, v in computed.items()}
  for record in records:
    if record["count"]:
      stored = fmt.npz_memmap(os.path.join(out_dir, record["file"]))
      shapes = {k: list(stored[fmt.PAIR_PREFIX + k].shape[1:]) for k in computed}
      break
  arrays = {k: {"shape": [int(d) for d in shapes[k]], "dtype": np.dtype(v.dtype).name} for k, v in computed.items()}
  return {"shards": records, "arrays": arrays, "dtype": dtype}


def _check_pair_shapes(manifest_kinds: dict[str, Any], encoder_info: dict[str, Any] | None) -> None:
  """The exported pair sets must fit the exported score_pairs (whose image side is the default regions')."""
  if not encoder_info or not encoder_info.get("pairs"):
    return
  for kind, side in (("images", "image"), ("texts", "text")):
    if kind not in manifest_kinds:
      continue
    stored, program = manifest_kinds[kind]["pairs"]["arrays"], encoder_info["pairs"][side]
    differ = [f"{k} {stored[k]['shape']} vs {program[k]['shape']}" for k in stored
              if stored[k]["shape"] != program[k]["shape"]]
    if differ:
      raise errors.ConfigError(
          f"The exported {kind}' pair sets differ in per-item shape from what the exported encoders make for a "
          f"query without boxes ({'; '.join(differ)}): the exported score_pairs could not score them. The run's "
          "image_predict_inputs must give a split's images as many regions as images without boxes.")


def _dim(out_dir: str, kinds: dict[str, Any]) -> int:
  for info in kinds.values():
    for shard in info["shards"]:
      with np.load(os.path.join(out_dir, shard["file"]), allow_pickle=False) as data:
        return data["vectors"].shape[1]
  return 0


def _write_if_changed(path: str, value: Any) -> bool:
  """Writes JSON only when the file differs (idempotence: a repeated export leaves every file untouched)."""
  if os.path.exists(path):
    with open(path) as f:
      try:
        if json.load(f) == json.loads(json.dumps(value)):
          return False
      except ValueError:
        pass
  fmt.write_json_atomic(path, value)
  return True


def _write_items(out_dir: str, kind: str, items: list[dict[str, Any]]) -> None:
  path = os.path.join(out_dir, f"{kind}.jsonl")
  text = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _host_variables(variables: Any) -> Any:
  """The variables as host numpy arrays on every process (gathered across processes when they span several)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(variables, tiled=True)
  return jax.device_get(variables)


def _ensure_encoders(out_dir: str, task, model, config, host_variables: Any, dim: int, pairs: bool) -> str:
  """Writes encoder/ unless an intact export of this step is already there. Runs on process 0 only, so it runs
  no computation over the (global) mesh: the dimension comes from the written shards."""
  info = exported_encoder.read_encoder_info(out_dir)
  if info is not None and info.get("step") == model.step:
    try:
      exported_encoder.ExportedEncoders(out_dir)  # verifies every checksum and that it loads
      return "kept"
    except errors.UserError:
      pass
  fns = task.predict_fns()
  pair_fns = {name: fns[name] for name in ("pair_image", "pair_text", "score_pairs")} if pairs else {}
  exported_encoder.write_encoders(out_dir, embed_image=fns["embed_image"], embed_text=fns["embed_text"],
                                  variables=host_variables, image_size=int(task.data_config().image_size),
                                  max_len=int(config.data.max_len), dim=int(dim),
                                  tokenizer_file=tokenizers.tokenizer_path(task.workdir), step=model.step,
                                  image_extras=_default_image_extras(task), **pair_fns)
  return "written"
