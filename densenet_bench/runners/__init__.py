"""One small runner per framework (ours) and per official implementation (peers).

Each defines a literal VARIANTS tuple (how it can execute a model: the framework's standard way
first, then the execution fast paths; read by densenet_bench.targets without importing the module)
and prepare(request) -> densenet_bench.timing.Prepared. Ours build the model with
densenet_<framework>.variants.make_model(config, request.model, request.memory_efficient) and step
it with the framework's train.train_step / train.eval_step. A framework of the registry is
benchmarked by the module named after it; module names match the framework, and imports inside are
absolute, so `import torch` in torch.py is PyTorch itself.
"""
