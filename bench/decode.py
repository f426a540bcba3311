r"""S5 decoding speed, two sections (--section=captions | cache | all; default captions).

captions: captions / s of greedy decoding and beam search (width 3) with the cached grid, through the captioning task's
  own decode path (configs/captioning/captioner_flickr8k.py with the EfficientNet-Lite2 grid at 260 px, built by
  `systems.create` + `CaptioningTask.decode`, the function `xmodal caption` and the evaluator run), against the
  peer a user would otherwise pick: Hugging Face transformers' `generate` (greedy and num_beams=3, its KV cache) on a
  GPT-2 decoder with cross attention of the same width / depth / heads / MLP / vocabulary, in PyTorch. Both decode
  from a grid of cached EfficientNet-Lite2 features [batch, 81, 1280] (random here: speed does not depend on the
  pixels) through a linear projection + LayerNorm to the decoder's width, with random weights and <eos> suppressed
  (ours: the output bias of <eos> at -1e9; transformers: min_new_tokens), so every caption runs to the full
  length (data.max_len + 1 tokens). One jitted call per batch (ours) vs one `generate` call (theirs); median over
  rounds after a warm-up call, the two alternating round by round; ratio = ours / transformers.

  python bench/decode.py                                   # batch 32, vocab 30,522 (MiniLM WordPiece), 3 rounds
  python bench/decode.py --batch=16 --vocab=10000 --rounds=2 --torch_threads=1
  python bench/decode.py --config=configs/captioning/captioner_flickr8k_pretrained.py   # its decoder's sizes

  --torch_threads: torch's intra-op threads (0: its default, one per core). On a machine busy with other jobs, torch's
  OpenMP threads spin-wait for each other and each step slows 10-20x (measured: 0.25 s vs 2-5 s for 8 captions on 2
  shared cores); pass 1 there, and XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" in
  the environment to hold ours to one thread too.

cache: tokens / s of greedy decoding through the KV cache vs recomputing the whole prefix each step, at caption
  lengths 16 and 32, and beam search of width 1 vs 3 (cached), on the decoder module directly.

  python bench/decode.py --section=cache                   # transformer decoder (width 256, depth 3, vocab 5,000)
  python bench/decode.py --section=cache --decoder=gru --batch=128 --rounds=5

  The decoder has random weights and <eos> is masked out of its logits, so every caption runs to the full length;
  the image context is a 7 x 7 grid of the decoder's width (EfficientNet-Lite's grid). Figures: median over rounds
  of tokens generated / wall time, after a compile-and-warm-up call (beam search: the best beam's tokens, i.e. output
  tokens / s).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from xmodal_jax.models.caption_decoder import build_decoder  # noqa: E402
from xmodal_jax.systems.captioning import beam_search, sampling  # noqa: E402
from peak_rss import peak_rss_mb  # noqa: E402  # bench/peak_rss.py

EOS = 3


def _decoder_fns(kind: str, vocab: int, length: int, width: int, depth: int):
  """(params, step_fn factory, recompute_fn factory, empty cache factory) of a random decoder."""
  fields = dict(vocab_size=vocab, max_len=length, width=width, depth=depth, num_heads=4, dropout_rate=0.0)
  model, decoder = build_decoder(kind, **fields), build_decoder(kind, **fields, decode=True)
  context = jnp.zeros((1, 49, width))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32), context)["params"]
  no_eos = lambda logits: logits.at[..., EOS].set(-1e9)

  def step_fn(ctx):
    def step(tokens, cache, position):
      logits, mutated = decoder.apply({"params": params, "cache": cache}, tokens, ctx, positions=position,
                                      mutable=["cache"])
      return no_eos(logits[:, -1]), mutated["cache"]
    return step

  def empty_cache(ctx):
    shapes = jax.eval_shape(lambda: decoder.apply({"params": params}, jnp.zeros((ctx.shape[0], length), jnp.int32),
                                                  ctx, mutable=["cache"])[1]["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  recompute = lambda ctx: (lambda inputs: no_eos(model.apply({"params": params}, inputs, ctx)))
  return step_fn, recompute, empty_cache


def _time(fn, context, rounds: int) -> tuple[float, np.ndarray]:
  out = jax.block_until_ready(fn(context))  # compile + warm up
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(context))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), np.asarray(out)


def _cache_section(args):
  rows = []
  batch, vocab = args.batch or 64, args.vocab or 5000
  context = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 49, args.width)), jnp.float32)
  common = dict(bos_id=2, eos_id=EOS, pad_id=0)
  for length in [int(x) for x in args.lengths.split(",")]:
    step_fn, recompute, empty_cache = _decoder_fns(args.decoder, vocab, length, args.width, args.depth)
    key = jax.random.PRNGKey(0)
    cached = jax.jit(lambda c, n=length: sampling.sample(step_fn(c), empty_cache(c), c.shape[0], n, key, greedy=True,
                                                         **common))
    uncached = jax.jit(lambda c, n=length: sampling.sample_recomputing(recompute(c), c.shape[0], n, key, greedy=True,
                                                                       **common))

    def beam(c, k, n=length):
      beams = jnp.repeat(c, k, axis=0)
      return beam_search.beam_search(step_fn(beams), empty_cache(beams), c.shape[0], k, n, **common)[0]

    results = {}
    for name, fn in (("greedy, cached", cached), ("greedy, recomputing", uncached),
                     ("beam 1, cached", jax.jit(lambda c: beam(c, 1))), ("beam 3, cached", jax.jit(lambda c: beam(c, 3)))):
      seconds, tokens = _time(fn, context, args.rounds)
      generated = int(np.sum(tokens != 0))
      results[name] = generated / seconds
      rows.append([length, name, generated // batch, f"{seconds * 1000:.1f}", f"{results[name]:,.0f}",
                   f"{peak_rss_mb():,.0f}"])
    same = "yes" if np.array_equal(_time(cached, context, 1)[1], _time(uncached, context, 1)[1]) else "NO"
    rows.append([length, f"cached / recomputing: {results['greedy, cached'] / results['greedy, recomputing']:.2f}x; "
                         f"beam 1 / beam 3: {results['beam 1, cached'] / results['beam 3, cached']:.2f}x; "
                         f"cached == recomputing tokens: {same}", "", "", "", ""])
  print(f"S5 decoding, {args.decoder} decoder width {args.width} depth {args.depth}, vocab {vocab}, batch "
        f"{batch}, {jax.devices()[0].platform} x {jax.device_count()} ({os.cpu_count()} CPU cores)")
  print(tabulate(rows, headers=["length", "decoding", "tokens / caption", "ms / batch", "tokens / s",
                                   "peak RSS MB (so far)"],
                 tablefmt="pipe"))


# ------------------------------------------------------------------------------------- captions / s vs transformers

GRID = (81, 1280)  # EfficientNet-Lite2 at 260 px: a 9 x 9 grid of 1280 channels (what the feature cache stores)


def _task(config_path: str, vocab: int, workdir: str):
  """The captioning task of `config_path` ("file.py" or "file.py:variant") on the Lite2 grid at 260 px, with a word
  tokenizer of `vocab` words (the decoder's output size is what matters for speed) saved in `workdir`, every output
  token allowed, random decoder embeddings; no reward, no scorers. -> (task, variables with <eos> suppressed)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from flax.core import meta  # pylint: disable=import-outside-toplevel
  from xmodal_jax import systems  # pylint: disable=import-outside-toplevel
  from xmodal_jax.data import tokenizers  # pylint: disable=import-outside-toplevel
  path, _, variant = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  config.data.update(tokenizer="word", image_size=260)
  config.model.encoder.efficientnet.variant = "efficientnet-lite2"
  config.model.output_vocab = "all"
  config.model.decoder.init_embeddings = ""
  config.reward.workdir = ""
  for name in config.scorers:
    config.scorers[name] = ""
  words = [f"w{i}" for i in range(vocab - 4)]  # + <pad> <unk> <bos> <eos>
  tokenizers.build_tokenizer("word", [" ".join(words[i::7]) for i in range(7)]).save(tokenizers.tokenizer_path(workdir))
  task = systems.create(config, workdir)
  task.setup(training=False)
  variables = task.model.init(jax.random.PRNGKey(0), None, jnp.zeros((1, task.seq_len), jnp.int32),
                              features=jnp.zeros((1,) + GRID))
  variables = meta.unbox(variables)
  bias = variables["params"]["decoder"]["logits"]["bias"]
  variables["params"]["decoder"]["logits"]["bias"] = bias.at[task.eos_id].set(-1e9)
  return task, variables


def _ours(task, variables, method: str):
  """fn(grid float32 [b, 81, 1280]) -> tokens [b, seq_len]: the task's context projection and decode, jitted."""
  from xmodal_jax.systems.captioning.captioner_model import Captioner  # pylint: disable=import-outside-toplevel
  from xmodal_jax.systems.captioning.captioner_task import DecodeOptions  # pylint: disable=import-outside-toplevel
  decode = task.config.decode
  options = DecodeOptions(method=method, beam_size=int(decode.beam_size), alpha=float(decode.alpha))

  @jax.jit
  def caption(v, grid):
    context = task.model.apply(v, features=grid, method=Captioner.encode)
    return task.decode(v, context, options)

  return lambda grid: np.asarray(caption(variables, grid))


def _theirs(task, vocab: int, num_beams: int):
  """fn(grid float32 [b, 81, 1280]) -> tokens: transformers' GPT-2 with cross attention, the same sizes as the
  task's decoder, `generate` greedy (num_beams=1) or beam search, its KV cache, <eos> held back by min_new_tokens."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  transformers.logging.set_verbosity_error()
  d = task.config.model.decoder
  width, length = int(d.width), task.seq_len
  gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=vocab, n_positions=length + 1, n_embd=width, n_layer=int(d.depth), n_head=int(d.num_heads),
      n_inner=int(d.mlp_dim) or 4 * width, add_cross_attention=True, resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, bos_token_id=task.bos_id, eos_token_id=task.eos_id, pad_token_id=0)).eval()
  project = torch.nn.Sequential(torch.nn.Linear(GRID[1], width), torch.nn.LayerNorm(width, eps=1e-6)).eval()

  def caption(grid):
    with torch.inference_mode():
      memory = project(torch.from_numpy(grid))
      n = len(grid)
      return gpt.generate(input_ids=torch.full((n, 1), task.bos_id), attention_mask=torch.ones(n, 1, dtype=torch.long),
                          encoder_hidden_states=memory, max_new_tokens=length, min_new_tokens=length,
                          num_beams=num_beams, do_sample=False).numpy()[:, 1:]

  return caption


def _captions_section(args):
  import tempfile  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  batch, vocab = args.batch or 32, args.vocab or 30522
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  grid = np.random.default_rng(0).normal(size=(batch,) + GRID).astype(np.float32)
  with tempfile.TemporaryDirectory() as workdir:
    task, variables = _task(args.config, vocab, workdir)
    fns = {}
    for method, beams, label in (("greedy", 1, "greedy"), ("beam", int(task.config.decode.beam_size), "beam 3")):
      fns[label] = {"ours": _ours(task, variables, method), "transformers": _theirs(task, len(task.tokenizer), beams)}
    times = {(label, who): [] for label in fns for who in fns[label]}
    tokens = {}
    for label, pair in fns.items():
      for who, fn in pair.items():
        tokens[label, who] = fn(grid)  # compile / warm up
    for _ in range(args.rounds):  # alternating: the machine's speed drifts
      for label, pair in fns.items():
        for who, fn in pair.items():
          start = time.perf_counter()
          fn(grid)
          times[label, who].append(time.perf_counter() - start)
  rows = []
  for label in fns:
    rate = {who: batch / float(np.median(times[label, who])) for who in fns[label]}
    for who in fns[label]:
      per_caption = float(np.mean(np.sum(tokens[label, who] != 0, axis=1)))
      rows.append([label, who, f"{per_caption:.0f}", f"{1000 * np.median(times[label, who]):.0f}",
                   f"{1000 * min(times[label, who]):.0f}-{1000 * max(times[label, who]):.0f}", f"{rate[who]:,.1f}",
                   f"{rate['ours'] / rate[who]:.2f}x", f"{peak_rss_mb():,.0f}"])
  d = task.config.model.decoder
  print(f"S5 captions / s with the cached EfficientNet-Lite2 grid [{batch}, {GRID[0]}, {GRID[1]}] (260 px): "
        f"{d.kind} decoder width {d.width} depth {d.depth} heads {d.num_heads}, vocab {len(task.tokenizer):,}, "
        f"{task.seq_len} tokens per caption; jax {jax.__version__} ({jax.devices()[0].platform} x "
        f"{jax.device_count()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}) vs torch {torch.__version__} "
        f"{torch.get_num_threads()} thread(s) + transformers {transformers.__version__}; {os.cpu_count()} CPU cores, "
        f"niceness {os.nice(0)}, load average "
        f"{os.getloadavg()[0]:.1f}, {args.rounds} alternating rounds")
  print(tabulate(rows, headers=["decoding", "library", "tokens / caption", "ms / batch (median)", "min-max ms",
                                "captions / s", "ours / this", "peak RSS MB (so far)"], tablefmt="pipe"))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--section", default="captions", choices=["captions", "cache", "all"])
  parser.add_argument("--config", default="configs/captioning/captioner_flickr8k.py", help="captions section")
  parser.add_argument("--batch", type=int, default=0, help="0: 32 (captions), 64 (cache)")
  parser.add_argument("--vocab", type=int, default=0, help="0: 30,522 (captions), 5,000 (cache)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--torch_threads", type=int, default=0, help="captions section: 0 = torch's default")
  parser.add_argument("--decoder", default="transformer", choices=["transformer", "gru"], help="cache section")
  parser.add_argument("--width", type=int, default=256, help="cache section")
  parser.add_argument("--depth", type=int, default=3, help="cache section")
  parser.add_argument("--lengths", default="16,32", help="cache section")
  args = parser.parse_args()
  if args.section in ("captions", "all"):
    _captions_section(args)
  if args.section in ("cache", "all"):
    _cache_section(args)


if __name__ == "__main__":
  main()
