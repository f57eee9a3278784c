"""Tasks a user brings, written as a user would with plain Flax and Optax, and run on lrlab's
engine by name (`--task=lrlab.examples.char_lm:task`). The tests run both."""
