"""S2: region-word alignment retrieval (the task: region_word_task.py, its model: region_word_model.py) and the
docs/region_word.md tables' runs (ablation.py)."""
