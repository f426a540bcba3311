r"""`xmodal export`: a trained run's embeddings of one split, and its encoders for serving.

  xmodal export --workdir=RUN --out=DIR [--split=val] [--source=folder:PATH] [--what=images,texts]
                [--checkpoint=latest|best] [--shard_size=1000] [--export_dtype=float32] [--noexport_encoders]

  export_run(systems.run_task(RUN, source=...), DIR, split="val", ...)    # the same from Python

Restores the run's params only (the spine's inference loading: `train/inference.py`), encodes the split under
the mesh with the run's towers (its `embed_image` / `embed_text` predict functions) and writes the format of
`serving/embedding_export.py` (beside this module) to DIR, plus the encoders as StableHLO
(`serving/exported_encoder.py`).

* Resumable: a shard is the unit of work; finished shards (record + matching sha256) are kept after a kill and
  only missing or damaged ones are encoded again.
* Idempotent: a second run with the same inputs (run step, config, source, split, kinds, shard size, dtype) finds
  every shard intact and writes nothing. Other inputs in a DIR that holds an export are refused (--overwrite
  replaces it).
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
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from xmodal_jax import disk_space, errors
from xmodal_jax.data import tokenizers
from xmodal_jax.serving import embedding_export as fmt
from xmodal_jax.serving import exported_encoder
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


class _Source:
  """The rows of one kind of one split: count, ids, and the predict inputs of rows [start, stop)."""

  def __init__(self, task, split: str, kind: str):
    self.task, self.kind = task, kind
    data = task.split(split)
    self.data = data
    if kind == "images":
      self.ids = np.asarray(data.image_ids, np.int64)
    else:
      self.tokens = task.tokens(split)
      self.ids = np.arange(len(self.tokens.tokens), dtype=np.int64)

  def inputs(self, start: int, stop: int) -> dict[str, np.ndarray]:
    if self.kind == "images":
      return {"images": self.data.load_images(np.arange(start, stop), self.task.data_config().image_size)}
    return {"tokens": self.tokens.tokens[start:stop], "mask": self.tokens.mask[start:stop]}

  def items(self) -> list[dict[str, Any]]:
    if self.kind == "images":
      return [{"id": int(i), "file": f"images/{int(i)}.jpg", "captions": list(caps)}
              for i, caps in zip(self.ids, self.data.captions)]
    flat = [c for caps in self.data.captions for c in caps]
    return [{"id": int(row), "image_id": int(self.data.image_ids[owner]), "text": text}
            for row, (owner, text) in enumerate(zip(self.tokens.text_to_image, flat))]


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


def _pending(out_dir: str, kind: str, bounds: list[tuple[int, int]]) -> list[int]:
  """Shards of `kind` not finished, agreed by all processes (each checks the shards it writes)."""
  me, count = jax.process_index(), jax.process_count()
  missing = np.array([i % count == me and fmt.finished_shard(out_dir, kind, i, len(bounds), b) is None
                      for i, b in enumerate(bounds)], np.int32)
  if count > 1:
    missing = np.asarray(multihost_utils.process_allgather(missing)).max(axis=0)
  return [i for i, m in enumerate(missing) if m]


def export_run(task, out_dir: str, *, split: str = "val", what: Sequence[str] = fmt.KINDS, which: str = "latest",
               shard_size: int = 1000, dtype: str = "float32", encoders: bool = True, overwrite: bool = False,
               batch_size: int = 256, mesh_shape: Sequence[int] = (-1, 1)) -> dict[str, Any]:
  """Exports `split` of the run of `task` (a task of a trained run, working in its workdir: `systems.run_task`) to
  `out_dir`; returns a summary (written / kept shards, seconds)."""
  what = tuple(dict.fromkeys(what))
  bad = [k for k in what if k not in fmt.KINDS]
  if bad or not what:
    raise errors.ConfigError(f"--what={','.join(what)}: choose from {','.join(fmt.KINDS)}.")
  if dtype not in DTYPES:
    raise errors.ConfigError(f"--export_dtype={dtype}: choose float32 or float16.")
  if shard_size < 1:
    raise errors.ConfigError(f"--shard_size={shard_size}: must be >= 1.")
  config, workdir = task.config, task.workdir
  t0 = time.time()
  model = inference.load_model(task, which=which, mesh_shape=mesh_shape)
  fns = task.predict_fns()
  if not {"embed_image", "embed_text"} <= set(fns):
    raise errors.ConfigError(f"The run in {workdir} is a {config.task!r} run, whose task has no embed_image / "
                             "embed_text predict functions; export works on retrieval and CLIP runs.")
  key = {"workdir": os.path.abspath(workdir), "step": model.step, "checkpoint": which,
         "config_sha256": _config_sha256(workdir), "source": str(config.data.source), "split": split,
         "kinds": list(what), "shard_size": int(shard_size), "dtype": dtype}
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
    manifest_kinds, max_norm_error = {}, 0.0
    for kind in what:
      rows = _Source(task, split, kind)
      n = len(rows.ids)
      bounds = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
      pending = _pending(out_dir, kind, bounds)
      summary["written"][kind], summary["kept"][kind] = len(pending), len(bounds) - len(pending)
      logging.info("export %s: %d rows in %d shards, %d to encode (%d kept).", kind, n, len(bounds), len(pending),
                   len(bounds) - len(pending))
      started = time.time()
      for done, index in enumerate(pending):
        start, stop = bounds[index]
        inputs = rows.inputs(start, stop)
        vectors = model.predict(f"embed_{kind[:-1]}", inputs, batch_size=batch_size)
        max_norm_error = max(max_norm_error, float(np.abs(np.linalg.norm(vectors, axis=-1) - 1).max()))
        if index % jax.process_count() == jax.process_index():
          summary.setdefault("mine", {}).setdefault(kind, []).append(index)
          if kind == "images":
            _write_images(out_dir, rows.ids[start:stop], inputs["images"])
          fmt.write_shard(out_dir, kind, index, len(bounds), (start, stop), rows.ids[start:stop],
                          vectors.astype(dtype))
        rate = (bounds[index][1] - bounds[pending[0]][0]) / max(time.time() - started, 1e-9)
        logging.info("export %s: shard %d/%d (%d rows/s).", kind, done + 1, len(pending), rate)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"xmodal_export_{kind}")
      records = [fmt.finished_shard(out_dir, kind, i, len(bounds), b) for i, b in enumerate(bounds)] if lead else []
      if lead and any(r is None for r in records):
        raise errors.DataError(f"{out_dir}: shards of {kind} are missing after the export; with --multihost the "
                               "--out directory must be shared by all hosts.")
      manifest_kinds[kind] = {"count": n, "shards": records, "items": f"{kind}.jsonl"}
      if lead:
        _write_items(out_dir, kind, rows.items())
    # The encoders' weights on the host: a collective when the run's arrays span several processes.
    host_variables = _host_variables(model.variables) if encoders else None
    if lead:
      dim = _dim(out_dir, manifest_kinds)
      summary["encoders"] = (_ensure_encoders(out_dir, task, model, config, host_variables, dim) if encoders
                             else "not exported")
      manifest = {"format": fmt.FORMAT, "version": fmt.VERSION, **key,
                  "dim": int(dim), "normalized": True, "kinds": manifest_kinds,
                  "image_size": int(task.data_config().image_size), "max_len": int(config.data.max_len)}
      if max_norm_error > 1e-2:
        manifest["normalized"] = False
      _write_if_changed(os.path.join(out_dir, fmt.MANIFEST), manifest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("xmodal_export_done")
  summary["seconds"] = round(time.time() - t0, 1)
  return summary


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


def _ensure_encoders(out_dir: str, task, model, config, host_variables: Any, dim: int) -> str:
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
  exported_encoder.write_encoders(out_dir, embed_image=fns["embed_image"], embed_text=fns["embed_text"],
                                  variables=host_variables, image_size=int(task.data_config().image_size),
                                  max_len=int(config.data.max_len), dim=int(dim),
                                  tokenizer_file=tokenizers.tokenizer_path(task.workdir), step=model.step)
  return "written"
