"""How members learn: optimizers as Optax factories of named float hyperparameters (per-member
data), the hyperparameter registry, populations of members, learning-rate schedules.
"""
