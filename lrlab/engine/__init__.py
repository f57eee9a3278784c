"""The population engine: the device program (state, member-mapped step, scanned segment,
evaluation, statuses), its placement on devices, the one segment loop, the stop signal, the
target protocols and the memory check.
"""
