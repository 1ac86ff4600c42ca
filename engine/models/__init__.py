"""Neural networks, in the layouts of the official checkpoints."""
