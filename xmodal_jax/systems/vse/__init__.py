"""S3: visual-semantic embeddings: VSE++ (vsepp_task.py), the dual encoder (dual_encoder_task.py) and MFSR
(mfsr_task.py, its model mfsr_model.py); the docs/vse.md ablation is experiments/mfsr.py, outside the package."""
