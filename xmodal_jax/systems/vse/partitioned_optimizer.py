"""Separate optimisers for disjoint sets of parameters, updated at different moments of one step (a GAN's
discriminators and the rest, alternating inside one jitted step).

Parameters are split by their top-level name: `part_of(name)` says which optimiser owns a subtree. The
transformation's state is {part: that optimiser's state of its subtree}; `init` builds it and the task's step calls
`update_part` for one part at a time, which leaves the other parts' parameters and optimiser states untouched
(a joint `optax.multi_transform` update would move every part, Adam's momentum included, at every call).
`update` (all parts at once) exists so the transformation is a valid optax one.
"""
from __future__ import annotations

from typing import Any, Callable

import optax


def subtree(params: dict[str, Any], part_of: Callable[[str], str], part: str) -> dict[str, Any]:
  """The top-level entries of `params` that belong to `part`."""
  return {k: v for k, v in params.items() if part_of(k) == part}


def partitioned(transforms: dict[str, optax.GradientTransformation], part_of: Callable[[str], str]
                ) -> optax.GradientTransformation:
  """One optax transformation per part (`transforms`: part name -> transformation)."""

  def init(params):
    return {part: tx.init(subtree(params, part_of, part)) for part, tx in transforms.items()}

  def update(grads, state, params=None):
    updates, new_state = {}, {}
    for part, tx in transforms.items():
      u, new_state[part] = tx.update(subtree(grads, part_of, part), state[part],
                                     None if params is None else subtree(params, part_of, part))
      updates.update(u)
    return updates, new_state

  out = optax.GradientTransformation(init, update)
  return _Partitioned(out.init, out.update, transforms, part_of)


class _Partitioned(optax.GradientTransformation):
  """The transformation, with its parts kept for `update_part`."""

  def __new__(cls, init, update, transforms, part_of):
    self = super().__new__(cls, init, update)
    self.transforms, self.part_of = transforms, part_of
    return self


def update_part(tx: optax.GradientTransformation, part: str, grads: dict[str, Any], opt_state: dict[str, Any],
                params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Apply the `part` optimiser of a `partitioned` tx: grads of that part's subtree -> (all params with that
  subtree updated, opt_state with that part's state updated)."""
  sub = subtree(params, tx.part_of, part)
  updates, part_state = tx.transforms[part].update(grads, opt_state[part], sub)
  return dict(params, **optax.apply_updates(sub, updates)), dict(opt_state, **{part: part_state})
