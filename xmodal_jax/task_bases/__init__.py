"""What two or more systems' tasks share: the task base (base.py), the contrastive retrieval task and its objective
(retrieval_task.py, contrastive_objective.py), frozen-tower region features (frozen_tower_regions.py) and the
rows x seeds ablation runner (ablation.py). Nothing here imports xmodal_jax.systems."""
