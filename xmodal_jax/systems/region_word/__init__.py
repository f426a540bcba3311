"""S2: region-word alignment retrieval (the task: region_word_task.py, its model: region_word_model.py); the
docs/region_word.md tables' runs are experiments/region_word.py, outside the package."""
