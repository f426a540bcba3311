"""S1 configs: the multimodal image classifier pipeline (shapes.py, flickr8k.py); the pipeline itself in common.py."""
