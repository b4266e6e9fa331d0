"""Experiments and benchmarks of kalman-optim; each module runs with `python -m experiments.<name>`."""
