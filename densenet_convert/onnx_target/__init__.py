"""The parity harness's `onnx` export target (densenet_spec.frameworks.EXPORT_TARGETS): our torch
DenseNet exported with torch.onnx, its graph checked (symmetric padding, every BatchNorm's
epsilon), run in onnxruntime; eval-mode stage outputs only. adapter.py holds the driver adapter.
"""
