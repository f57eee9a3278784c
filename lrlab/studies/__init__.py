"""One module per experiment, named as its command: a library function taking a task and settings,
training through the shared run skeleton, returning a result object.
"""
