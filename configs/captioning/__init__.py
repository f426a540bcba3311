"""S5 configs: captioners (captioner_*), their reward and judge two-tower models (clip_*) and the reward models with a
grammar head (reward_*); shared settings in common.py."""
