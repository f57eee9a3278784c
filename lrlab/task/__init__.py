"""What is trained: a task is a Flax model (Linen or NNX, through the adapters), a loss, metrics, a
target and in-memory data; the shipped datasets and models, and the convolution formulations.
"""
