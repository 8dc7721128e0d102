"""densenet-convert: DenseNet weights between the canonical file and the official models' formats.

One module per format (torchvision_format, keras_format, gluon_format) holds its name table, the
transposes its layout needs and its BatchNorm conventions; recognise.py derives the config from
the tensors' shapes. The CLI (cli.py) reads and writes each format in the environment that has its
framework (worker.py), with the canonical weight file in between.
"""
