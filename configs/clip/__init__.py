"""Contrastive two-tower configs: CLIP from scratch, LiT and SigLIP over pretrained towers, CLIP ViT-B/16; shared
settings in common.py."""
