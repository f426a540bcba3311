"""Image<->text retrieval configs: VSE++ (vsepp_*), the pretrained dual encoder, mFSR (mfsr_*) and S2 (region_word_*);
shared settings in common.py."""
