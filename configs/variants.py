"""`get_config(arg)`'s one string argument (`--config=FILE.py:ARG`) -> typed options, after big_vision's
`bvcc.parse_arg`. A config declares its variants once, as data, and reads them as fields:

  def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, paper=False)
    config = ...
    if arg.tiny:
      config.train.num_steps = 4

`FILE.py:tiny` sets the bool option `tiny`; `FILE.py:tiny,steps=200` also sets `steps`, read as its default's type
(bool, int, float or str). `aliases` name a shorthand for other options (`aliases={"full": "resnet101"}`). No
argument (or an empty one) gives every default. An unknown option, or a value its type cannot read, is a ValueError
that names it and lists the config's options.
"""
from __future__ import annotations

import ml_collections

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _options(spec: dict, aliases: dict[str, str]) -> str:
  if not spec:
    return "this config has no variants"
  names = [name if isinstance(default, bool) else f"{name}=<{type(default).__name__}>"
           for name, default in spec.items()]
  names += [f"{alias} (= {expansion})" for alias, expansion in aliases.items()]
  return "this config's variants: " + ", ".join(names)


def _value(name: str, text: str, default):
  kind = type(default)
  if kind is bool:
    if text.lower() in _BOOLS:
      return _BOOLS[text.lower()]
  else:
    try:
      return kind(text)
    except ValueError:
      pass
  raise ValueError(f"variant option {name}={text!r}: not a {kind.__name__} (its default is {default!r}).")


def parse_arg(arg: str | None, *, aliases: dict[str, str] | None = None, **spec) -> ml_collections.ConfigDict:
  """The options of `arg` ("tiny", "tiny,steps=200", "" or None), each at its default in `spec` unless `arg` sets
  it; `aliases`: name -> the options it stands for ("resnet101", "tiny,judge")."""
  aliases = dict(aliases or {})
  items = [item.strip() for item in (arg or "").split(",")]
  items = [part.strip() for item in items for part in (aliases[item].split(",") if item in aliases else [item])]
  out = dict(spec)
  for item in filter(None, items):
    name, has_value, text = item.partition("=")
    if name not in spec:
      raise ValueError(f"unknown variant {name!r}; {_options(spec, aliases)}.")
    if has_value:
      out[name] = _value(name, text, spec[name])
    elif isinstance(spec[name], bool):
      out[name] = True
    else:
      raise ValueError(f"variant option {name!r} takes a value: {name}=<{type(spec[name]).__name__}>.")
  return ml_collections.ConfigDict(out)
