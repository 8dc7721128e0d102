"""densenet-bench: our DenseNet in each framework, beside that framework's official DenseNet.

Modules by job: targets (what can be measured, from the framework registry), plan (options into
measurements, rounds), launch / runner / runners / timing (one process per measurement, in the
target's own environment), metrics (FLOPs, the GEMM peak, rates), results (the JSON lines), report
and plots, cli (`densenet-bench`). The CLI imports no framework.
"""
