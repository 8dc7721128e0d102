"""densenet-bench: our DenseNet in each framework, beside that framework's official DenseNet.

The CLI (spec environment) starts one process per measurement in the framework's own environment
(benchmarks.runner), each answering with one JSON result; nothing here imports a framework.
"""
