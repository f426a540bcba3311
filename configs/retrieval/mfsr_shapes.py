r"""mFSR (feature separation + image and caption reconstruction over VSE++) on the built-in shapes world.

Run (from the repo root):
  xmodal train --config=configs/retrieval/mfsr_shapes.py --workdir=workdirs/mfsr_shapes
The paper's ablation (VSE++, +mo, +sp, +mo+sp, +mo+sp+img-re, +mo+sp+cap-re, full; 3 seeds):
  python -m experiments.run mfsr:shapes --workdir=workdirs/mfsr_ablation_shapes   (experiments/mfsr.py)
Variants: `:tiny` (seconds; tests), `:paper` (the paper's protocol: batch 24, Adam 2e-4 for 15 epochs, 2e-5 for 15;
37,500 steps). Every field can be overridden, e.g. `--config.loss_weights.image=0 --config.model.separation.normalize=concat`.

Same towers, data, optimiser and budget as configs/retrieval/vsepp_shapes.py; the generator works at 32 px (the
shapes images are 64 px; set model.generator.image_size=64 for full size). docs/vse.md has the measured ablation.

Peak RSS (measured, 2026-12-07, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 xmodal train
--config=configs/retrieval/mfsr_shapes.py --workdir=W --config.train.num_steps=20
--config.train.checkpoint_every=20`, 2-core CPU, whole run: data, compiles, training, evaluations): 2.17 GB (GiB;
/usr/bin/time %M).
"""
import ml_collections

from configs.retrieval import common
from configs.retrieval import vsepp_shapes as vsepp
from configs.variants import parse_arg
from xmodal_jax.systems import evaluator_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False, paper=False)
  config = vsepp.get_config("tiny" if arg.tiny else None)  # VSE++'s data, towers, optimiser, budget, evals
  config.model.image.tower = "resnet"
  config.evals.test_reconstruction = evaluator_config("image_reconstruction", split="test", count=64, batch_size=64)
  common.mfsr_sections(config, embed_dim=config.model.embed_dim, part_dim=config.model.embed_dim,
                       generator_size=32, gan_width=8, decoder_width=256)
  config.checkpoint.final_from = "best"
  if arg.tiny:
    config.model.separation.update(modal_dim=16, semantic_dim=16, specific_dim=16, hidden_dim=32)
    config.model.generator.update(image_size=16, base_width=4)
    config.model.discriminator.base_width = 4
    config.model.caption_decoder.width = 16
    config.evals.test_reconstruction.update(count=16, batch_size=16)
  if arg.paper:
    common.paper_protocol(config, config.data.num_train)
  return config
