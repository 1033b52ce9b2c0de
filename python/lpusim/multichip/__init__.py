"""Several chips: partitioning a model (partition.py), pipeline and tensor parallelism, the plesiosynchronous clocks."""
