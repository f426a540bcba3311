"""Decoding algorithms over a decoder's step function: greedy / sampling (sampling.py) and beam search
(beam_search.py). They know nothing of models: a caller closes its model and parameters into the step function."""
