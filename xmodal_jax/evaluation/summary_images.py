"""Example pictures of an evaluation, for TensorBoard and the docs: grids of images with text drawn beside or
under them (PIL), and the same examples as markdown text.

An evaluator that shows examples leaves them in `Evaluator.summaries` (a `Summaries`) after `evaluate`; the
trainer writes them as images "<prefix>/examples/<name>" and texts "<prefix>/example_texts/<name>" next to the
evaluation's scalars (`write`):

  retrieval: `retrieval_examples`: text queries -> their top-k images, image queries -> their top-k captions;
  captioning: `caption_examples`: images with their generated captions (and references, in the text);
  classification, label ranking: `label_examples`: images with their top labels (S1: top phrases);
  once per run: `data_samples`, a grid of the split's images with a caption each.

What is shown comes from the split's `EvalData` (nothing is decoded again):
  images: `extras["display_images"]` (uint8 [N, H, W, 3]), else `image_inputs["images"]` when that is uint8
    [N, H, W, 3] (tasks whose image inputs are features show text only);
  strings: `extras["captions"]` (one per text row, as `text_to_image`), `extras["references"]` (per image),
    `label_names`.
Matches are framed green in the images and marked "(true)" in the text. Pictures cost a few PIL draws per
evaluation: only the handful of shown items is rendered.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

CELL = 128                      # px: side of an image cell
TRUE = (46, 160, 67)            # frame / text colour of a true match
OTHER = (200, 200, 200)         # frame of any other result
INK = (20, 20, 20)
GREY = (110, 110, 110)
PAPER = (255, 255, 255)


@dataclasses.dataclass
class Summaries:
  """images: name -> uint8 [1, H, W, 3] (one picture each); texts: name -> markdown."""
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  texts: dict[str, str] = dataclasses.field(default_factory=dict)


def write(writer: Any, step: int, prefix: str, summaries: Summaries | None) -> None:
  """Write `summaries` with a clu metric writer: images as "<prefix>/examples/<name>", texts as
  "<prefix>/example_texts/<name>" (a tag holds one kind of summary)."""
  if summaries is None:
    return
  if summaries.images:
    writer.write_images(step, {f"{prefix}/examples/{k}": v for k, v in summaries.images.items()})
  if summaries.texts:
    writer.write_texts(step, {f"{prefix}/example_texts/{k}": v for k, v in summaries.texts.items()})


# ---- what a split can show
def display_images(data: Any) -> np.ndarray | None:
  """uint8 [N, H, W, 3] images of the split's rows, or None when the task gives none (feature inputs)."""
  images = data.extras.get("display_images")
  if images is None and data.image_inputs:
    images = data.image_inputs.get("images")
  if images is None:
    return None
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    return None
  return images


def caption_strings(data: Any) -> list[str] | None:
  """The string of each text row (EvalData.extras["captions"]), or None."""
  captions = data.extras.get("captions")
  return None if captions is None else list(captions)


def image_captions(data: Any, rows: Sequence[int]) -> list[str]:
  """One caption per image row: its first text row's caption, or its first reference, or ''."""
  captions, references = caption_strings(data), data.extras.get("references")
  if captions is not None and data.text_to_image is not None:
    first: dict[int, int] = {}
    for t, owner in enumerate(np.asarray(data.text_to_image).tolist()):
      first.setdefault(owner, t)
    return [captions[first[r]] if r in first else "" for r in rows]
  if references is not None:
    return [references[r][0] if len(references[r]) else "" for r in rows]
  return ["" for _ in rows]


def spread(count: int, total: int) -> np.ndarray:
  """`count` rows spread evenly over 0..total-1 (fixed across evaluations, so the same examples improve)."""
  return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))


# ---- drawing
def _font(size: int):
  from PIL import ImageFont  # pylint: disable=import-outside-toplevel
  return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
  """Words of `text` in lines at most `width` px wide; the last kept line ends in '...' when cut."""
  lines, line = [], ""
  for word in text.split():
    trial = f"{line} {word}".strip()
    if font.getlength(trial) <= width or not line:
      line = trial
    else:
      lines.append(line)
      line = word
  if line:
    lines.append(line)
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    lines[-1] = lines[-1] + " ..."
  out = []
  for line in lines:  # a single word wider than the cell: cut it
    while font.getlength(line) > width and len(line) > 4:
      line = line[:-4] + "..."
    out.append(line)
  return out


def text_cell(text: str, width: int, height: int, *, colour=INK, background=PAPER, size: int = 12):
  """A PIL image `width` x `height` with `text` wrapped into it."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  cell = Image.new("RGB", (width, height), background)
  font = _font(size)
  line_height = size + 3
  draw = ImageDraw.Draw(cell)
  for i, line in enumerate(_wrap(text, font, width - 8, max(1, (height - 4) // line_height))):
    draw.text((4, 2 + i * line_height), line, fill=colour, font=font)
  return cell


def image_cell(image: np.ndarray, side: int = CELL, frame=None, frame_width: int = 4):
  """uint8 [H, W, 3] -> a PIL image `side` x `side` (tiny images scaled up by pixel repetition, so shapes stay
  sharp), framed in colour `frame` when given."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  picture = Image.fromarray(np.asarray(image, np.uint8))
  small = max(picture.size) * 2 <= side
  picture = picture.resize((side, side), Image.NEAREST if small else Image.BILINEAR)
  if frame is not None:
    ImageDraw.Draw(picture).rectangle([0, 0, side - 1, side - 1], outline=frame, width=frame_width)
  return picture


def stack(pictures: Sequence, *, horizontal: bool, gap: int = 4, background=PAPER):
  """PIL images side by side (or one under another), top / left aligned."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  widths, heights = [p.size[0] for p in pictures], [p.size[1] for p in pictures]
  if horizontal:
    size = (sum(widths) + gap * (len(pictures) - 1), max(heights))
  else:
    size = (max(widths), sum(heights) + gap * (len(pictures) - 1))
  out = Image.new("RGB", size, background)
  offset = 0
  for p in pictures:
    out.paste(p, (offset, 0) if horizontal else (0, offset))
    offset += (p.size[0] if horizontal else p.size[1]) + gap
  return out


def captioned(image: np.ndarray, caption: str, *, side: int = CELL, lines: int = 4, frame=None, colour=INK):
  """An image cell with `caption` under it."""
  return stack([image_cell(image, side, frame), text_cell(caption, side, lines * 15 + 4, colour=colour)],
               horizontal=False, gap=0)


def as_summary(picture) -> np.ndarray:
  """PIL image -> uint8 [1, H, W, 3] (what clu's write_images takes)."""
  return np.asarray(picture.convert("RGB"), np.uint8)[None]


def grid(cells: Sequence, columns: int, gap: int = 6):
  """PIL images in rows of `columns`."""
  rows = [stack(cells[i:i + columns], horizontal=True, gap=gap) for i in range(0, len(cells), columns)]
  return stack(rows, horizontal=False, gap=gap)


# ---- examples
def _text_of(captions: list[str] | None, text_to_image: np.ndarray, t: int) -> str:
  return captions[t] if captions is not None else f"text {t} (of image {int(text_to_image[t])})"


def _top(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices [q, k] of each row's k best scores, best first (ties by index)."""
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def retrieval_examples(t2i_scores: np.ndarray, i2t_scores: np.ndarray, text_queries: np.ndarray,
                       image_queries: np.ndarray, text_to_image: np.ndarray, images: np.ndarray | None,
                       captions: list[str] | None, k: int = 5, side: int = CELL) -> Summaries:
  """Both directions of retrieval for a few queries.

  t2i_scores: [q, N] scores of text rows `text_queries` [q] against every image; i2t_scores: [q', M] of image
  rows `image_queries` [q'] against every text; text_to_image: int [M]; images: uint8 [N, H, W, 3] or None
  (text only); captions: the string of each text row or None. Returns images "text_to_image" (a row per query:
  the query text, then its top-k images) and "image_to_text" (the query image, then its top-k captions), and the
  same as markdown texts.
  """
  text_to_image = np.asarray(text_to_image)
  t2i_top, i2t_top = _top(np.asarray(t2i_scores), k), _top(np.asarray(i2t_scores), k)
  lines = []
  for t, top, scores in zip(text_queries, t2i_top, t2i_scores):
    lines.append(f"**{_text_of(captions, text_to_image, t)}** (image {int(text_to_image[t])})\n")
    lines += [f"{r + 1}. image {int(i)} ({scores[i]:.3f})" + (" (true)" if i == text_to_image[t] else "")
              for r, i in enumerate(top)]
    lines.append("")
  out = Summaries(texts={"text_to_image": "\n".join(lines)})
  lines = []
  for i, top, scores in zip(image_queries, i2t_top, i2t_scores):
    lines.append(f"**image {int(i)}**\n")
    lines += [f"{r + 1}. {_text_of(captions, text_to_image, t)} ({scores[t]:.3f})"
              + (" (true)" if text_to_image[t] == i else "") for r, t in enumerate(top)]
    lines.append("")
  out.texts["image_to_text"] = "\n".join(lines)
  if images is None:
    return out
  rows = []
  for t, top in zip(text_queries, t2i_top):
    cells = [text_cell(_text_of(captions, text_to_image, t), 2 * side, side, background=(240, 240, 240))]
    cells += [image_cell(images[i], side, TRUE if i == text_to_image[t] else OTHER) for i in top]
    rows.append(stack(cells, horizontal=True))
  out.images["text_to_image"] = as_summary(stack(rows, horizontal=False, gap=8))
  rows = []
  for i, top in zip(image_queries, i2t_top):
    cells = [image_cell(images[i], side)]
    cells += [text_cell(f"{r + 1}. {_text_of(captions, text_to_image, t)}", 2 * side, side,
                        colour=TRUE if text_to_image[t] == i else INK,
                        background=(232, 245, 233) if text_to_image[t] == i else (245, 245, 245))
              for r, t in enumerate(top)]
    rows.append(stack(cells, horizontal=True))
  out.images["image_to_text"] = as_summary(stack(rows, horizontal=False, gap=8))
  return out


def caption_examples(images: np.ndarray | None, generated: Sequence[str], references: Sequence[Sequence[str]],
                     rows: Sequence[int] | None = None, columns: int = 4, side: int = CELL) -> Summaries:
  """Generated captions of a few images: a markdown table (image, generated, references) and, with `images`
  (uint8 [n, H, W, 3]), a grid of the images with their generated caption under each. rows: the images' numbers
  in the split (default 0..n-1)."""
  lines = ["| image | generated | references |", "|---|---|---|"]
  for i, caption, refs in zip(_numbers(rows, len(generated)), generated, references):
    lines.append(f"| {i} | {_cell_text(caption) or '(empty)'} | {'<br>'.join(_cell_text(r) for r in refs)} |")
  out = Summaries(texts={"captions": "\n".join(lines)})
  if images is not None:
    out.images["captions"] = as_summary(grid([captioned(img, c or "(empty)", side=side)
                                              for img, c in zip(images, generated)], columns))
  return out


def label_examples(images: np.ndarray | None, top_labels: Sequence[Sequence[str]],
                   true_labels: Sequence[Sequence[str]] | None = None, rows: Sequence[int] | None = None,
                   columns: int = 4, side: int = CELL) -> Summaries:
  """Images with their top labels (best first): a markdown list and, with `images` (uint8 [n, H, W, 3]), a grid
  with the labels under each image; a label in `true_labels` (per image) is marked true / drawn green. rows: the
  images' numbers in the split (default 0..n-1)."""
  truth = [set(t) for t in true_labels] if true_labels is not None else [set() for _ in top_labels]
  lines = []
  for i, labels, true in zip(_numbers(rows, len(top_labels)), top_labels, truth):
    shown = ", ".join(f"{name} (true)" if name in true else name for name in labels)
    lines.append(f"- image {i}: {shown}" + (f"; true: {', '.join(sorted(true))}" if true else ""))
  out = Summaries(texts={"top_labels": "\n".join(lines)})
  if images is None:
    return out
  cells = []
  for img, labels, true in zip(images, top_labels, truth):
    rows = [text_cell(f"{r + 1}. {name}", side, 17, colour=TRUE if name in true else INK)
            for r, name in enumerate(labels)]
    cells.append(stack([image_cell(img, side)] + rows, horizontal=False, gap=0))
  out.images["top_labels"] = as_summary(grid(cells, columns))
  return out


def data_samples(data: Any, count: int = 16, columns: int = 4, side: int = CELL) -> Summaries | None:
  """`count` images of the split spread over it, each with a caption: an image grid "samples" and a markdown
  list; None when the split has no displayable images."""
  images = display_images(data)
  if images is None:
    return None
  rows = spread(count, len(images))
  captions = image_captions(data, rows)
  out = Summaries(texts={"samples": "\n".join(f"- image {int(r)}: {_cell_text(c)}" for r, c in zip(rows, captions))})
  out.images["samples"] = as_summary(grid([captioned(images[r], c, side=side) for r, c in zip(rows, captions)],
                                          columns))
  return out


def _numbers(rows: Sequence[int] | None, count: int) -> list[int]:
  return list(range(count)) if rows is None else [int(r) for r in rows]


def _cell_text(text: str) -> str:
  """Text safe in a markdown table cell."""
  return str(text).replace("|", "\\|").replace("\n", " ")
