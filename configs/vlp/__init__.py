"""S4 configs: single-stream vision-language pretraining (single_stream_*); shared settings in common.py."""
