"""Experiment configs: one file per experiment with `get_config(arg)`, grouped by project (retrieval/, clip/, vlp/,
s1/, captioning/), each project's shared settings in its `common.py`.

A package, so a config imports what it shares by name: `from configs.retrieval import common`. `xmodal` runs a
config file by path (`--config=configs/retrieval/vsepp_shapes.py:tiny`) and first puts the directory that holds
`configs/` on sys.path (xmodal_jax/main.py, `config_package_root`). `:variant` args: configs/variants.py.
"""
