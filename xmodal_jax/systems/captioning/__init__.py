"""S5: image captioning by MLE then self-critical RL under a contrastive reward (captioner_task.py, its model
captioner_model.py, decoding: sampling.py, beam_search.py), the reward model's grammar head and attribute negatives
(reward_model.py), and the two-tower scorers both use (scorers.py)."""
