"""Training populations under settings: sweeps (vectorized or one member after another), what
stops members early (retirement, successive halving), replicates, and the cores of the methods
that choose rates (searches, exploit-and-explore, the range test, variants of a run).
"""
