"""The parity harness's `onnx-mx` export target (densenet_spec.frameworks.EXPORT_TARGETS): our
MXNet DenseNet exported with MXNet's own exporter (mx.onnx), its graph checked (symmetric
padding, every BatchNorm's epsilon), run in onnxruntime; eval-mode stage outputs only. adapter.py
holds the driver adapter; it runs in the mx environment (onnx 1.17.0, onnxruntime 1.32.0).
"""
