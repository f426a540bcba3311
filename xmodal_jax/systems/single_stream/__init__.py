"""S4: single-stream vision-language pretraining (seed EP 3 889 830 A1): the task (single_stream_task.py), its
per-example masks (masking.py); the docs/single_stream.md tables' runs are experiments/single_stream.py, outside
the package."""
