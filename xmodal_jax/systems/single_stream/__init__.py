"""S4: single-stream vision-language pretraining (seed EP 3 889 830 A1): the task (single_stream_task.py), its
per-example masks (masking.py) and the docs/single_stream.md tables' runs (ablation.py)."""
