"""Which words of a text query the run's tokenizer does not know, for the search service's warning.

A word is unknown when every token the tokenizer gives it (special tokens such as WordPiece's [CLS] / [SEP] and
pieces that decode to nothing, such as SentencePiece's word-start "▁", left out) is the unknown token: the word vocabulary's <unk> (GRU runs: any word not in the training captions),
WordPiece's [UNK] (characters outside BERT's vocabulary), SentencePiece's <unk> (characters never seen in
training). Subword tokenizers split most made-up words into known pieces, so they flag far fewer words than the
word vocabulary: the check reports what the model actually sees, not whether a word is English.

  report = unknown_words(tokenizer, "xyzzy qwerty foo")   # {"count": 3, "total": 3, "words": [...]}
  warning(report)                                         # "3 of 3 words unknown: results are not meaningful"
"""
from __future__ import annotations

import string
from typing import Any


def _token_ids(tokenizer) -> tuple[set[int], set[int]]:
  """(unknown ids, special ids) of a tokenizer of `xmodal_jax.data.tokenizers` (its own `unk_id`: WordPiece's
  [UNK] is 100, not the shared layout's 1)."""
  unknown = {int(tokenizer.unk_id)}
  special = {int(getattr(tokenizer, name)) for name in ("pad_id", "bos_id", "eos_id") if hasattr(tokenizer, name)}
  return unknown, special - unknown


def query_words(query: str) -> list[str]:
  """The query's words: split at white space, lower case, ASCII punctuation stripped from both ends (other
  symbols, e.g. an emoji, stay: a WordPiece tokenizer sees them and may not know them)."""
  words = (word.strip(string.punctuation).lower() for word in str(query).split())
  return [word for word in words if word]


def unknown_words(tokenizer, query: str) -> dict[str, Any]:
  """{"count": unknown words, "total": words, "words": the unknown ones, in query order (repeats kept once)}.

  tokenizer None (a service without one): nothing is flagged.
  """
  words = query_words(query)
  if tokenizer is None:
    return {"count": 0, "total": len(words), "words": []}
  unknown_ids, special_ids = _token_ids(tokenizer)
  unknown = []
  for word in words:
    try:
      ids = [int(i) for i in tokenizer.encode(word) if int(i) in unknown_ids
             or int(i) not in special_ids and tokenizer.decode([int(i)]).strip()]  # no blank "▁" piece either
    except ValueError:  # the word vocabulary's normalisation left nothing (a symbol): the model never sees it
      ids = []
    if (not ids or all(i in unknown_ids for i in ids)) and word not in unknown:
      unknown.append(word)
  count = sum(1 for word in words if word in unknown)
  return {"count": count, "total": len(words), "words": unknown}


def warning(report: dict[str, Any]) -> str | None:
  """The message for an `unknown_words` report: None when every word is known."""
  count, total = report["count"], report["total"]
  if not count:
    return None
  if count == total:
    return f"{count} of {total} words unknown: results are not meaningful"
  return f"{count} of {total} words unknown ({', '.join(report['words'])}): results may be off"
