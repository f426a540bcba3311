"""Settings shared by the S4 (single-stream vision-language pretraining) configs of this folder.

Imported by the configs beside it: `from configs.vlp import common`.
"""
import ml_collections

from xmodal_jax.data.config import caption_fields, data_config
from xmodal_jax.systems import evaluator_config


def data(source: str, **fields) -> ml_collections.ConfigDict:
  """The data section with the caption tokenizer fields."""
  return data_config(source, **dict(caption_fields(), **fields))


def single_stream_sections(config: ml_collections.ConfigDict, *, width: int, num_layers: int,
                           object_target: str) -> ml_collections.ConfigDict:
  """S4's sections (task "single_stream_vlp", xmodal_jax/systems/single_stream/single_stream_task.py) beside config.data / train /
  optimizer. The data-set configs set the tower's cut and the regions."""
  config.task = "single_stream_vlp"
  config.image_tower = ml_collections.ConfigDict(dict(
      variant="efficientnet-lite0", input_size=224, feature_cut="head_conv",  # or the input of a stage: "stage5"
      cache_dtype="float16", cache_batch_size=64))
  config.regions = ml_collections.ConfigDict(dict(
      method="data",        # data: the data's boxes (shapes world: ground truth) | grid (photos without boxes)
      grid=(3, 3), include_full=False,  # objects only (a whole-image box would overlap every object)
      max_regions=4, eval_method="", eval_jitter=0.0, jitter_seed=0))
  config.model = ml_collections.ConfigDict(dict(
      dtype="float32", width=width, num_layers=num_layers, num_heads=4, mlp_dim=4 * width,
      embed_dim=128,        # the dual encoder's space (shortlists for re-ranking)
      dropout_rate=0.0))    # 0.1 learnt slower in short runs (shapes: 150 steps, object accuracy 3% vs 9% with lr 1e-3)
  config.masking = ml_collections.ConfigDict(dict(
      text_mode="span",     # span: coarse-grained (1..max_span consecutive units) | token: single units
      text_ratio=0.15, max_span=3,
      object_mode="overlap",  # overlap: an overlap group or an isolated object | random: as many, at random
      object_target=object_target,  # label: the label text | feature: regress the pooled feature | both
      # Share of examples whose masked objects' words are masked with them (Fig. 3). Such an example hides both
      # sides of one object, so neither its words nor its label can be read from the pair: kept a minority.
      aligned_fraction=0.2,
      suffix_fraction=0.0))   # share of examples with a masked suffix (caption fine-tuning: 1.0)
  config.itm = ml_collections.ConfigDict(dict(
      negatives_per_positive=1,
      mode_weights=(1.0, 1.0, 1.0),  # (another image, another text, both) per negative ([0126]-[0128])
      sampling="hard",      # random | hard: drawn by the dual encoder's similarity (ALBEF; not in the seed)
      hard_temperature=0.2))  # hard: p(negative) ~ exp(cosine / this)
  config.dual = ml_collections.ConfigDict(dict(temperature=0.05))
  config.loss_weights = ml_collections.ConfigDict(dict(words=1.0, objects=1.0, matching=1.0, dual=1.0))
  config.schedule = "sum"   # sum: every loss every step | alternate: masked tasks / matching on alternate steps
  config.library = ml_collections.ConfigDict(dict(enabled=False, per_label=4, seed=0))
  config.caption = ml_collections.ConfigDict(dict(order="left_to_right"))  # or "confidence"
  config.init_from = ""     # a single_stream_vlp workdir whose params a fine-tuning run starts from
  config.eval_seed = 0      # the masked_prediction protocols' masks
  return config


def single_stream_evals(split: str, *, rerank_k: int = 10, full_images: int = 100, objects: bool = True,
                        captions: bool = True, batch_size: int = 250, val_every: int = 0,
                        val_split: str = "", val_items: int = 1_000) -> ml_collections.ConfigDict:
  """S4's evaluators on `split`, at the end: retrieval by the matching score re-ranking the dual encoder's top-k
  (and the dual encoder alone), full pairwise scoring of the first `full_images` images (one fold), retrieval
  by predicted objects (labelled data), masked-word (and masked-object) accuracy under the fixed protocols, and
  captions by mask filling. val_every > 0: masked-word accuracy on the first `val_items` captions of `val_split`
  every that many steps (the convergence curve). They read the cached objects and units: the *_features /
  *_units predict functions (score_pairs takes either path's items)."""
  cached = dict(embed_image="embed_image_features", embed_text="embed_text_units", batch_size=batch_size)
  pairwise = dict(scorer="pairwise", pair_batch_size=1024, **cached)
  evals = ml_collections.ConfigDict()
  evals[split] = evaluator_config("retrieval", split=split, rerank_k=rerank_k, **pairwise)
  evals[f"{split}_dual"] = evaluator_config("retrieval", split=split, **cached)
  if full_images:  # the same first images three ways: every pair scored, re-ranked top-k, the dual encoder
    first = dict(split=split, max_images=full_images)
    evals[f"{split}_full{full_images}"] = evaluator_config("retrieval", **first, **pairwise)
    evals[f"{split}_full{full_images}_rerank"] = evaluator_config("retrieval", **first, rerank_k=rerank_k,
                                                                  **pairwise)
    evals[f"{split}_full{full_images}_dual"] = evaluator_config("retrieval", **first, **cached)
  if objects:
    evals[f"{split}_by_objects"] = evaluator_config("retrieval", split=split, rerank_k=rerank_k,
                                                    score_pairs="object_score_pairs", **pairwise)
  protocols = ("words_span", "words_token") + (("objects",) if objects else ())
  evals[f"{split}_masked"] = evaluator_config("masked_prediction", split=split, protocols=protocols,
                                              batch_size=batch_size)
  if captions:
    evals[f"{split}_captions"] = evaluator_config("captioning", split=split, caption="caption_features",
                                                  batch_size=batch_size)
  if val_every:
    evals.masked_curve = evaluator_config("masked_prediction", split=val_split, every=val_every, at_end=False,
                                        protocols=("words_span", "words_token"), max_items=val_items,
                                        batch_size=batch_size)
  return evals
