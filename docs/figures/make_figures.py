#!/usr/bin/env python
r"""The figures of docs/figures/. Each is made by one command of this script, which it names (in a footer line
and in the PNG's "Command" text field). Run from the repo root after `source launch/env.sh`:

  python docs/figures/make_figures.py                     # every figure whose input exists; the others are skipped
  python docs/figures/make_figures.py shapes_samples vsepp_shapes_curves --vsepp_workdir=workdirs/vsepp_shapes

Figures (name: what it shows, from which input):
  shapes_samples          12 shapes-world val images with a caption each (the data itself: no run needed)
  vsepp_shapes_curves     training loss and val R@1 by step of a configs/retrieval/vsepp_shapes.py run
                          (--vsepp_workdir)
  f8k_pretrained_curves   the same for a configs/retrieval/vsepp_flickr8k_pretrained.py run (--f8k_workdir)
  f8k_text_to_image       Flickr8k val: 4 captions -> their top-5 of the 1,000 val photos (--f8k_workdir, its
                          best checkpoint; queries spread evenly over the split, not picked)
  f8k_image_to_text       Flickr8k val: 4 photos -> their top-5 of the 5,000 val captions (same run and queries)
  search_page             the search page (`xmodal serve`) answering a query over an export of a photo folder
                          (--photos_export: made by `xmodal export --images=DIR` + `xmodal index`, see
                          docs/walkthrough-search-your-photos.md), in headless Chromium (selenium + chromedriver)
  s5_captions             a captioning run's captions of 8 Flickr8k val photos (--s5_workdir; optional)

A figure whose input is missing is skipped with a message naming what to run first. Flickr8k is read at run time
from where the run read it (its config's data.source, e.g. ../shared/data/flickr8k), or from --flickr8k=DIR;
nothing of it is copied into the repository except the rendered figures.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPT = "python docs/figures/make_figures.py"
FIGURES = ("shapes_samples", "vsepp_shapes_curves", "f8k_pretrained_curves", "f8k_text_to_image",
           "f8k_image_to_text", "search_page", "s5_captions")


class Skip(Exception):
  """The figure's input is missing: the message says what to run first."""


def _command(name: str, **inputs: str) -> str:
  return " ".join([SCRIPT, name] + [f"--{k}={v}" for k, v in inputs.items()])


def _save(picture, name: str, command: str, out_dir: str) -> str:
  """A PIL image with a footer naming `command`, as OUT/<name>.png (the command also in its "Command" field)."""
  from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
  from xmodal_jax.evaluation import summary_images as si
  try:  # a monospaced font keeps "--flag" legible; Pillow's own font where DejaVu is not installed
    font = ImageFont.truetype("DejaVuSansMono.ttf", 11)
  except OSError:
    font = ImageFont.load_default(size=11)
  footer = Image.new("RGB", (picture.size[0], 18), si.PAPER)
  ImageDraw.Draw(footer).text((4, 2), f"made by: {command}", fill=si.GREY, font=font)
  page = si.stack([picture, footer], horizontal=False, gap=2)
  info = PngImagePlugin.PngInfo()
  info.add_text("Command", command)
  path = os.path.join(out_dir, f"{name}.png")
  page.save(path, pnginfo=info, optimize=True)
  return path


def _need_run(workdir: str | None, flag: str, config: str) -> str:
  if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
    raise Skip(f"needs a run: --{flag}={workdir} holds none (no config.json); train one with `xmodal train "
               f"--config={config} --workdir={workdir or 'WORKDIR'}`.")
  return workdir


def _source_flag(args) -> dict[str, str]:
  return {"flickr8k": args.flickr8k} if args.flickr8k else {}


def _load(workdir: str, flickr8k: str | None, which: str):
  """The run restored for inference (its `which` checkpoint, else its latest), reading Flickr8k from `flickr8k`
  when given (else where the run read it)."""
  from xmodal_jax import errors, systems
  from xmodal_jax.train import inference
  if flickr8k and not os.path.isdir(flickr8k):
    raise Skip(f"needs the Flickr8k folder: --flickr8k={flickr8k} does not exist.")
  task = systems.run_task(workdir, source=f"folder:{flickr8k}" if flickr8k else None)
  try:
    return inference.load_model(task, which=which)
  except (errors.MissingError, errors.WorkdirError):  # no best checkpoint (yet): the latest
    pass
  try:
    return inference.load_model(task)
  except errors.MissingError as e:
    raise Skip(str(e)) from None


# ---- figures
def shapes_samples(args):
  from configs.retrieval import vsepp_shapes
  from xmodal_jax.data import sources
  from xmodal_jax.evaluation import summary_images as si
  config = vsepp_shapes.get_config().data
  split = sources.load_split(config, "val")
  rows = si.spread(12, len(split))
  images = split.load_images(rows, config.image_size)
  cells = [si.captioned(img, split.captions[r][0], side=176, lines=4) for img, r in zip(images, rows)]
  return si.grid(cells, 4), _command("shapes_samples")


def _curves(workdir: str, title: str, command: str):
  """Training loss and val R@1 (both directions) by step, from the run's TensorBoard event files."""
  try:
    import matplotlib
  except ImportError:
    raise Skip("needs matplotlib: pip install -e .[docs]  (matplotlib, pinned in setup.py)") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image
  from xmodal_jax.train import workdir as workdir_lib
  loss = workdir_lib.scalar_history(workdir, "train/loss")
  if not loss:
    raise Skip(f"{workdir} has no train/loss in its TensorBoard event files yet.")
  figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
  left.plot(*zip(*loss), color="#555555", linewidth=1)
  left.set(title="training loss", xlabel="step", yscale="log")
  for tag, label, colour in (("val/i2t_r1", "image -> text R@1", "#2e7d32"),
                             ("val/t2i_r1", "text -> image R@1", "#1565c0")):
    points = workdir_lib.scalar_history(workdir, tag)
    if points:
      right.plot(*zip(*points), marker="o", label=label, color=colour)
  right.set(title="val R@1 (%)", xlabel="step")
  if right.lines:
    right.legend(loc="lower right")
  else:
    right.text(0.5, 0.5, "no evaluation yet", ha="center", transform=right.transAxes)
  for axis in (left, right):
    axis.grid(alpha=0.3)
  figure.suptitle(title)
  figure.tight_layout()
  buffer = _png_bytes(figure)
  plt.close(figure)
  return Image.open(buffer).convert("RGB"), command


def _png_bytes(figure):
  import io
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  buffer.seek(0)
  return buffer


def vsepp_shapes_curves(args):
  workdir = _need_run(args.vsepp_workdir, "vsepp_workdir", "configs/retrieval/vsepp_shapes.py")
  return _curves(workdir, "VSE++ on the shapes world (configs/retrieval/vsepp_shapes.py)",
                 _command("vsepp_shapes_curves", vsepp_workdir=args.vsepp_workdir))


def f8k_pretrained_curves(args):
  workdir = _need_run(args.f8k_workdir, "f8k_workdir", "configs/retrieval/vsepp_flickr8k_pretrained.py")
  return _curves(workdir, "Flickr8k over pretrained towers (configs/retrieval/vsepp_flickr8k_pretrained.py)",
                 _command("f8k_pretrained_curves", f8k_workdir=args.f8k_workdir))


_F8K_EXAMPLES = {}


def _f8k_examples(args):
  """summary_images.retrieval_examples of the Flickr8k run's best checkpoint on val at figure size (computed once
  for both directions)."""
  if "out" in _F8K_EXAMPLES:
    return _F8K_EXAMPLES["out"]
  workdir = _need_run(args.f8k_workdir, "f8k_workdir", "configs/retrieval/vsepp_flickr8k_pretrained.py")
  from xmodal_jax.evaluation import summary_images as si
  loaded = _load(workdir, args.flickr8k, which="best")
  data = loaded.task.eval_data("val")
  print(f"[f8k] embedding {len(data.text_to_image)} captions and {len(data.image_inputs['images'])} photos of val "
        f"(step {loaded.step}; minutes on a CPU)...", flush=True)
  text_emb = np.asarray(loaded.predict("embed_text", data.text_inputs, 256))
  image_emb = np.asarray(loaded.predict("embed_image", data.image_inputs, 32))
  text_to_image = np.asarray(data.text_to_image)
  images = si.spread(4, len(image_emb))
  texts = np.asarray([np.flatnonzero(text_to_image == i)[0] for i in images])
  out = si.retrieval_examples(text_emb[texts] @ image_emb.T, image_emb[images] @ text_emb.T, texts, images,
                              text_to_image, si.display_images(data), si.caption_strings(data), side=176)
  _F8K_EXAMPLES["out"] = (out, loaded.step)
  return _F8K_EXAMPLES["out"]


def f8k_text_to_image(args):
  from PIL import Image
  out, _ = _f8k_examples(args)
  return (Image.fromarray(out.images["text_to_image"][0]),
          _command("f8k_text_to_image", f8k_workdir=args.f8k_workdir, **_source_flag(args)))


def f8k_image_to_text(args):
  from PIL import Image
  out, _ = _f8k_examples(args)
  return (Image.fromarray(out.images["image_to_text"][0]),
          _command("f8k_image_to_text", f8k_workdir=args.f8k_workdir, **_source_flag(args)))


def s5_captions(args):
  workdir = _need_run(args.s5_workdir, "s5_workdir", "configs/captioning/captioner_flickr8k.py")
  from PIL import Image
  from xmodal_jax.evaluation import summary_images as si
  from xmodal_jax.train import inference
  kind = inference.read_run_config(workdir).task
  if kind != "captioning":
    raise Skip(f"--s5_workdir={workdir} is a {kind!r} run, not a captioner: give a run of "
               "configs/captioning/captioner_flickr8k.py (S5's captioner, e.g. after its SCST stage).")
  loaded = _load(workdir, args.flickr8k, which="latest")
  task = loaded.task
  split = task.split("val")
  rows = si.spread(8, len(split))
  images = split.load_images(rows, task.config.data.image_size)
  captions = task.decode_text(np.asarray(loaded.predict("caption", {"images": images}, 8)))
  out = si.caption_examples(images, captions, [split.captions[r] for r in rows], rows=rows, side=176)
  return Image.fromarray(out.images["captions"][0]), _command("s5_captions", s5_workdir=workdir,
                                                               **_source_flag(args))


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def search_page(args):
  export = args.photos_export
  if not export or not os.path.isdir(os.path.join(export, "index")):
    raise Skip(f"needs an indexed export of a photo folder: --photos_export=DIR (got {export!r}); make one with "
               "`xmodal export --workdir=RUN --out=DIR --images=PHOTOS` and `xmodal index --export=DIR` "
               "(docs/walkthrough-search-your-photos.md).")
  try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
  except ImportError as e:
    raise Skip(f"needs selenium ({e}): pip install selenium") from None
  chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
  driver_path = shutil.which("chromedriver")
  if not (chromium and driver_path):
    raise Skip("needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver).")
  port = _free_port()
  url = f"http://127.0.0.1:{port}/"
  server = subprocess.Popen([sys.executable, "-m", "xmodal_jax.main", "serve", f"--index={export}/index",
                             f"--port={port}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 300
    while True:
      if server.poll() is not None:
        raise RuntimeError(f"xmodal serve exited: {server.stderr.read().decode()[-2000:]}")
      try:
        urllib.request.urlopen(url + "api/health", timeout=5).read()
        break
      except OSError:
        if time.monotonic() > deadline:
          raise RuntimeError("xmodal serve did not answer within 300 s") from None
        time.sleep(1)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--hide-scrollbars"):
      options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
      browser.get(url)
      wait = WebDriverWait(browser, 120)
      wait.until(lambda d: "model step" in d.find_element(By.ID, "info").text)
      browser.find_element(By.ID, "query").send_keys(args.page_query)
      browser.find_element(By.ID, "search-button").click()
      wait.until(lambda d: "results for" in d.find_element(By.ID, "status").text)
      wait.until(lambda d: d.execute_script(
          "return Array.from(document.querySelectorAll('#results img')).every(i => i.complete)"))
      path = os.path.join(args.out, "_page.png")
      browser.save_screenshot(path)
    finally:
      browser.quit()
  finally:
    server.terminate()
    server.wait(timeout=30)
  from PIL import Image
  picture = Image.open(path).convert("RGB")
  os.remove(path)
  return picture, _command("search_page", photos_export=export, page_query=repr(args.page_query))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("figures", nargs="*",
                      help=f"which figures (default: all): {', '.join(FIGURES)}")
  parser.add_argument("--out", default=HERE, help="where the PNGs go (default: docs/figures)")
  parser.add_argument("--vsepp_workdir", default="workdirs/vsepp_shapes")
  parser.add_argument("--f8k_workdir", default="workdirs/f8k_pretrained")
  parser.add_argument("--photos_export", default="exports/my_photos")
  parser.add_argument("--page_query", default="a dog runs through the snow")
  parser.add_argument("--s5_workdir", default="workdirs/s5_flickr8k_clip")
  parser.add_argument("--flickr8k", default=None,
                      help="the Flickr8k folder, if not where the run read it (its config's data.source)")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.figures) - set(FIGURES))
  if unknown:
    parser.error(f"unknown figure(s) {unknown}; the figures are {', '.join(FIGURES)}")
  os.makedirs(args.out, exist_ok=True)
  os.chdir(REPO)
  sys.path.insert(0, REPO)
  made = 0
  for name in args.figures or FIGURES:
    start = time.time()
    try:
      picture, command = globals()[name](args)
    except Skip as e:
      print(f"skipped {name}: {e}", flush=True)
      continue
    print(f"made {_save(picture, name, command, args.out)} in {time.time() - start:.0f}s", flush=True)
    made += 1
  return 0 if made or not args.figures else 1


if __name__ == "__main__":
  sys.exit(main())
