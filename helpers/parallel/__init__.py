"""Training runs past one process: the notebook side of the accelerate launcher."""
