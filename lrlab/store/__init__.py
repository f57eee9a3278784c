"""What a run keeps: the run handle (its workdir), checkpoints, member records and their ranking,
result files written atomically, views for other tools, and figures.
"""
