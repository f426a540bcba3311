"""What two or more systems' tasks share: the task base (base.py), the contrastive retrieval task and its objective
(retrieval_task.py, contrastive_objective.py) and frozen-tower region features (frozen_tower_regions.py). Nothing
here imports xmodal_jax.systems. (The rows x seeds runner of the paper experiments is experiments/, outside the
package.)"""
