r"""S5's independent judge on Flickr8k: a dual encoder over other towers than the reward's, never used in training.

The reward (configs/retrieval/vsepp_flickr8k_pretrained.py) is EfficientNet-Lite2 at 260 px + MiniLM with a
1024-d joint space, seed 0. The judge is EfficientNet-Lite0 at 224 px (another ImageNet network; the Flickr8k
copy's own size, so no upsampling) + MiniLM (the one offline text tower) with a 512-d joint space, seed 1: the
same recipe (cached lower towers, head conv and MiniLM layers 2-5 fine-tuned, InfoNCE), so it is a comparable
retrieval model with separately trained weights and another image network. It scores every captioner of the S5
table (CLIP-S, RefCLIP-S, generated-caption retrieval); no captioner ever sees its gradients.

  xmodal train --config=configs/captioning/judge_flickr8k.py --workdir=workdirs/s5_flickr8k_judge
"""
import ml_collections

from configs.retrieval import vsepp_flickr8k_pretrained
from configs.variants import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tiny=False)
  config = vsepp_flickr8k_pretrained.get_config("tiny" if arg.tiny else None)
  config.seed = 1
  if not arg.tiny:
    config.data.update(image_size=224, prepare_size=224)
    config.model.update(embed_dim=512)
    config.model.image.variant = "efficientnet-lite0"
    config.evals.val.every = 250
    config.train.checkpoint_every = 250
  return config
