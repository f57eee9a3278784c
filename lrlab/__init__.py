"""lrlab: choose learning rates and optimizers by experiment, a whole population at a time."""

__version__ = "0.1.0"
