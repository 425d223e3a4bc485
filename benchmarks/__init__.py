"""Benchmarks of the exported FCN-8s: in process, behind gRPC, in the Beam job, training,
scaling, export and bfloat16, against the hardware's floor. `python -m benchmarks --help`."""
