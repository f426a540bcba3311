"""S1 building blocks: siamese text embedding, n-gram bags, fusion head, text generator, InfoNCE, annotations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tests.helpers import load_config
from xmodal_jax.data import sources
from xmodal_jax.evaluation.classification import classification_metrics
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.objectives.contrastive_softmax import symmetric_infonce
from xmodal_jax.systems.classifier import query_annotations
from xmodal_jax.systems.classifier.classifier_heads import BottleneckClassifier, FusionClassifier
from xmodal_jax.systems.classifier.ngram_embedding import SiameseQueryEmbedding
from xmodal_jax.systems.classifier.ngrams import NgramVocab, phrase_ngrams, UNK_ID
from xmodal_jax.systems.classifier.text_generator_model import TextGenerator
from xmodal_jax.train import sharding


def test_phrase_ngrams_and_vocab(tmp_path):
  assert phrase_ngrams("Large red circle") == ["large", "red", "circle", "large red", "red circle"]
  vocab = NgramVocab.build(["red circle", "blue circle", "red square"])
  assert vocab.grams[0] in ("circle", "red") and len(vocab) == 2 + 7
  ids, mask = vocab.encode_batch(["red circle", "green circle"], max_len=4)
  assert ids.shape == (2, 4) and mask[0].tolist() == [True, True, True, False]
  assert ids[1, 0] == UNK_ID and ids[1, 2] == UNK_ID and ids[1, 1] == vocab.encode("circle")[0]
  vocab.save(str(tmp_path / "ngrams.json"))
  assert NgramVocab.load(str(tmp_path / "ngrams.json")).encode("red square") == vocab.encode("red square")


def test_siamese_towers_share_one_set_of_weights():
  vocab = NgramVocab.build(["red circle", "blue square", "two shapes"])
  model = SiameseQueryEmbedding(len(vocab), dim=8, embed_dim=6)
  a_ids, a_mask = vocab.encode_batch(["red circle", "two shapes"], 5)
  b_ids, b_mask = vocab.encode_batch(["two shapes", "red circle"], 5)
  params = model.init(jax.random.PRNGKey(0), a_ids, a_mask, b_ids, b_mask)["params"]
  assert list(params) == ["encoder"]  # one tower's parameters, used twice
  a, b = model.apply({"params": params}, a_ids, a_mask, b_ids, b_mask)
  np.testing.assert_allclose(a[0], b[1], atol=1e-6)
  np.testing.assert_allclose(a[1], b[0], atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
  # Changing the shared table changes both sides identically.
  bumped = jax.tree.map(lambda x: x + 0.1, nn.meta.unbox(params))
  a2, b2 = model.apply({"params": bumped}, a_ids, a_mask, b_ids, b_mask)
  np.testing.assert_allclose(a2[0], b2[1], atol=1e-6)
  assert not np.allclose(a2[0], a[0])
  # Padding does not change a bag's embedding.
  c_ids, c_mask = vocab.encode_batch(["red circle"], 9)
  c = model.apply({"params": params}, c_ids, c_mask, method=SiameseQueryEmbedding.embed)
  np.testing.assert_allclose(c[0], a[0], atol=1e-6)


def test_fusion_and_pixel_heads_shapes():
  fusion = FusionClassifier(num_classes=10, hidden=(512,), dropout_rate=0.2)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 200 + 1024))
  params = fusion.init(jax.random.PRNGKey(0), x)["params"]
  assert fusion.apply({"params": params}, x).shape == (4, 10)
  kernels = [v.shape for v in jax.tree.leaves(nn.meta.unbox(params)) if v.ndim == 2]
  assert kernels == [(1224, 512), (512, 10)]  # two fully-connected layers
  train_out = fusion.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(train_out, fusion.apply({"params": params}, x))  # dropout only in training
  pixel = BottleneckClassifier(ResNetEncoder(stage_widths=(8,), blocks_per_stage=(1,), stem_width=8, norm_groups=4),
                               num_classes=3, bottleneck_dim=1024)
  images = jnp.zeros((2, 32, 32, 3))
  p = pixel.init(jax.random.PRNGKey(0), images)
  assert pixel.apply(p, images).shape == (2, 3)
  assert pixel.apply(p, images, method=BottleneckClassifier.embed).shape == (2, 1024)


def test_resnet101_variant_has_resnet101_parameter_count():
  """configs/s1/shapes.py:resnet101's backbone, abstractly (no arrays): torchvision's ResNet-101 has 44,549,160
  parameters, 42,500,160 without its fc layer (2048 x 1000 + 1000). GroupNorm has the same affine parameters per
  channel as BatchNorm (whose running statistics are buffers, not parameters), so the counts match exactly."""
  config = load_config("configs/s1/shapes.py:resnet101")
  assert load_config("configs/s1/shapes.py:full").to_dict() == config.to_dict()  # the old name, an alias
  for name in ("text_generator", "pixel_embedding"):
    image = config.stages[name].model.image
    assert image.block == "bottleneck" and tuple(image.blocks_per_stage) == (3, 4, 23, 3)
  encoder = ResNetEncoder(**config.stages.pixel_embedding.model.image)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  abstract = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), images)
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.meta.unbox(abstract)))
  assert count == 42_500_160
  assert jax.eval_shape(encoder.apply, abstract, images).shape == (1, 7, 7, 2048)  # stride 32, 4 x 512 channels


def test_bottleneck_blocks_forward_and_default_stays_basic():
  tiny = dict(stem_width=8, stage_widths=(4, 8), blocks_per_stage=(2, 1), norm_groups=2)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  rng = np.random.default_rng(0)

  def random_params(model):  # eval_shape + numpy: a real init (He-normal, truncated) takes seconds on a CPU
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(1), images))
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype), abstract)

  model = ResNetEncoder(**tiny, block="bottleneck")
  params = random_params(model)
  out = model.apply(params, images)
  assert out.shape == (2, 4, 4, 32) and np.all(np.isfinite(out))  # 4 x the last width
  kernels = {k: v["kernel"].shape for k, v in params["params"]["stage0_block0"].items() if "kernel" in v}
  assert kernels == {"Conv_0": (1, 1, 8, 4), "Conv_1": (3, 3, 4, 4), "Conv_2": (1, 1, 4, 16), "shortcut": (1, 1, 8, 16)}
  assert "shortcut" not in params["params"]["stage0_block1"]  # same shape: identity shortcut
  basic = ResNetEncoder(**tiny)
  assert basic.block == "basic" and basic.apply(random_params(basic), images).shape == (2, 4, 4, 8)
  with pytest.raises(ValueError, match="block='wide'"):
    jax.eval_shape(ResNetEncoder(**tiny, block="wide").init, jax.random.PRNGKey(1), images)


def test_text_generator_query_matrix_is_padded_and_sharded_over_model():
  backbone = ResNetEncoder(stage_widths=(8,), blocks_per_stage=(1,), stem_width=8, norm_groups=4)
  model = TextGenerator(backbone, num_queries=300, embed_dim=64)
  images = jnp.zeros((2, 32, 32, 3))
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images)["params"])
  assert abstract["queries"].value.shape == (384, 64)  # padded to a multiple of 128
  mesh = sharding.create_mesh((2, 4))
  shardings = sharding.logical_shardings(abstract, mesh, sharding.logical_axis_rules())
  assert tuple(shardings["queries"].spec) == ("model", None)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), images)["params"])
  x, table = model.apply({"params": params}, images)
  assert x.shape == (2, 64) and table.shape == (384, 64)
  assert model.apply({"params": params}, method=TextGenerator.query_table).shape == (300, 64)


def _infonce_reference(a, b, t, a_ids, b_ids):
  logits = a @ b.T / t
  total = 0.0
  for lg, ids in ((logits, b_ids), (logits.T, a_ids)):
    for i in range(len(a)):
      keep = [j for j in range(len(a)) if j == i or ids[j] != ids[i]]
      row = lg[i, keep]
      total += -(lg[i, i] - np.log(np.sum(np.exp(row))))
  return total / (2 * len(a))


def test_symmetric_infonce_matches_reference_and_masks_duplicates():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 5)); a /= np.linalg.norm(a, axis=1, keepdims=True)
  b = rng.normal(size=(6, 5)); b /= np.linalg.norm(b, axis=1, keepdims=True)
  a_ids, b_ids = np.array([0, 1, 2, 3, 4, 5]), np.array([7, 8, 7, 9, 10, 8])  # rows 0/2 and 1/5 share b items
  loss, aux = symmetric_infonce(jnp.asarray(a), jnp.asarray(b), 0.1, a_ids=jnp.asarray(a_ids), b_ids=jnp.asarray(b_ids))
  assert float(loss) == pytest.approx(_infonce_reference(a, b, 0.1, a_ids, b_ids), rel=1e-5)
  unmasked, _ = symmetric_infonce(jnp.asarray(a), jnp.asarray(b), 0.1)
  assert float(unmasked) > float(loss)  # masking false negatives removes terms from each normaliser
  assert 0.0 <= float(aux["pair_accuracy"]) <= 1.0


def test_classification_metrics_by_hand():
  m = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), num_classes=3)
  assert m["accuracy"] == pytest.approx(50.0)
  assert m["mean_class_accuracy"] == pytest.approx(np.mean([100.0, 100.0 / 3]))
  with pytest.raises(ValueError, match="No labelled"):
    classification_metrics(np.array([], int), np.array([], int), 3)


def test_shapes_annotations_queries_sorted_by_frequency_and_sampled_deterministically():
  config = load_config("configs/s1/shapes.py:tiny")
  train = sources.load_split(config.data, "train")
  vocab = query_annotations.query_vocabulary(config.data, train)
  notes = query_annotations.annotate(config.data, train, vocab)
  counts = np.bincount(np.concatenate(notes.query_ids), minlength=len(vocab))
  assert np.all(np.diff(counts) <= 0)  # id 0 = most frequent
  assert [vocab[i] for i in notes.query_ids[0]] == sorted(train.extras.queries[0], key=vocab.index)
  keys = np.arange(10, dtype=np.uint32)
  pairs = notes.sample_queries(np.arange(10), keys, count=2)
  assert np.array_equal(pairs, notes.sample_queries(np.arange(10), keys, count=2))
  assert np.all(pairs[:, 0] != pairs[:, 1])
  assert all(set(p) <= notes.query_sets()[i] for i, p in enumerate(pairs.tolist()))
  assert notes.label_names == query_annotations.label_names(config.data) and np.all(notes.labels >= 0)


def test_row_adagrad_update_matches_numpy_with_duplicate_rows():
  from xmodal_jax.train.sparse_rows import row_adagrad_update
  rng = np.random.default_rng(0)
  table, acc = rng.normal(size=(10, 4)).astype(np.float32), np.full(10, 0.1, np.float32)
  rows = np.array([3, 7, 3, 0, 3])
  grads = rng.normal(size=(5, 4)).astype(np.float32)
  new_table, new_acc = jax.jit(row_adagrad_update)(jnp.asarray(table), jnp.asarray(acc), jnp.asarray(rows),
                                                   jnp.asarray(grads), 0.5)
  want_t, want_a = table.copy(), acc.copy()
  for r in np.unique(rows):
    g = grads[rows == r].sum(0)
    want_a[r] += np.mean(g ** 2)
    want_t[r] -= 0.5 * g / np.sqrt(want_a[r] + 1e-10)
  np.testing.assert_allclose(new_table, want_t, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_acc, want_a, rtol=1e-5)


def test_sparse_query_update_touches_only_sampled_rows_on_a_2x4_mesh(tmp_path):
  from tests.helpers import make_task
  from xmodal_jax.train import stages, trainer
  config = stages.stage_config(load_config(
      "configs/s1/shapes.py:tiny", "--config.mesh.shape=(2,4)",
      "--config.stages.text_generator.loss.query_update=sparse_adagrad",
      "--config.stages.text_generator.loss.num_samples=8"), "text_generator")
  setup = trainer.build(make_task(config, tmp_path))
  state = setup.init_state(jax.random.PRNGKey(0))
  shapes = [x.shape for x in jax.tree.leaves(state.opt_state)]
  table_shape = state.params["queries"].shape
  assert table_shape not in shapes  # no dense [K, D] optimiser moments for W
  assert (table_shape[0],) in shapes  # one Adagrad accumulator per row
  before = np.asarray(state.params["queries"])
  step = trainer.make_train_step(setup)
  data = setup.task.train_iterator(process_index=0, process_count=1)
  first_bad = jnp.array(-1, jnp.int32)
  batch = next(data)
  state, first_bad, metrics = step(state, setup.frozen, first_bad, sharding.global_batch_from_host(batch, setup.mesh))
  assert int(first_bad) == -1 and np.isfinite(float(metrics["loss"]))
  changed = np.flatnonzero(np.any(np.asarray(state.params["queries"]) != before, axis=1))
  assert 0 < len(changed) <= len(batch["labels"]) + 8
  assert set(np.asarray(batch["labels"]).tolist()) <= set(changed.tolist())
  assert np.all(changed < len(setup.task.queries))  # padding rows are never touched
