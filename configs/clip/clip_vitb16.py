r"""CLIP ViT-B/16 for accelerators (Cloud TPU pod slices, multi-GPU hosts): a ViT-B/16 at 224 px (85.8M params) and a
12-layer, 512-wide causal text transformer (CLIP's text tower; 54M params with a 32K SentencePiece vocabulary)
into a 512-d space; bfloat16 compute with float32 params and optimiser, every block rematerialised, params sharded
over the data axis (FSDP through the rule table), and the chunked (ring) loss: memory per device grows with B/n,
not with the global batch B.

Run once per host of a TPU VM slice (see docs/tpu.md for preparing COCO):
  xmodal train --multihost --config=configs/clip/clip_vitb16.py --workdir=gs://BUCKET/runs/clip_b16 \
      --config.data.source=karpathy:$DATA/dataset_coco.json:$COCO --config.data.prepared_dir=$PREP/coco
  ... --config.loss.kind=sigmoid                          # SigLIP (Zhai et al. 2023)
  ... --config.train.grad_accum_steps=4                   # the same global batch in 4 micro-batches (GradCache)
Variants: `:tiny` runs the same code path (bf16, remat, FSDP, ring loss, 2 micro-batches) at tiny width on shapes
world (tests run it for one step on 8 fake CPU devices); the full model is checked with jax.eval_shape.

Not run here (no accelerator and no COCO on this project's machine): no measured figures yet, peak host RSS
included (accelerator-sized: 140M params at batch 4,096 is not a 2-core CPU run). Anchor, CLIP ViT-B/16
(Radford et al. 2021, 400M pairs): far beyond what COCO's 118K images give; expect COCO 5K retrieval well below it.
"""
import ml_collections

from configs.clip import common
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  data = common.data("karpathy:dataset_coco.json:coco_images", image_size=224, prepare_size=256, flip=True,
                     tokenizer="sentencepiece", vocab_size=32_000, max_len=64)
  config = common.clip_config(
      data, loss="infonce", embed_dim=512,
      image=common.vit(patch_size=16, width=768, depth=12, num_heads=12, remat=True),
      text=common.text_transformer(width=512, depth=12, num_heads=8, remat=True, vocab_size=32_000))
  config.model.dtype = "bfloat16"
  config.loss.chunked = True
  config.mesh.fsdp = True
  config.train.update(batch_size=4_096, num_steps=20_000, checkpoint_every=1_000, log_every=100)
  config.optimizer.update(learning_rate=5e-4, warmup_steps=1_000)
  config.evals = common.evals(("val", "test"), every=2_000, fold_size=1_000, zero_shot=False)
  if arg.tiny:
    config.data = common.data("shapes", num_train=64, num_val=16, num_test=16, image_size=64, max_len=40)
    config.model.update(embed_dim=32)
    config.model.image.update(width=32, depth=2, num_heads=2)
    config.model.text.update(width=32, depth=2, num_heads=2, vocab_size=0)
    config.loss.kind = "sigmoid"
    config.train.update(batch_size=32, num_steps=1, log_every=1, checkpoint_every=1, grad_accum_steps=2)
    config.optimizer.warmup_steps = 0
    config.evals = common.evals(("val",), every=0, batch_size=16, zero_shot=False)
  return config
