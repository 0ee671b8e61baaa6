"""Measuring ``.tflite`` and ``.onnx`` files: it imports only `tfcompress.core`, never the converter.

The flatbuffer reader (`tflite_file`, with `ConvertedModel`), LiteRT's CPU kernels and XNNPACK
(`litert`: `evaluate_tflite`, `evaluate_many`, `predict`), TFLite Micro (`micro`), per-op profiles and
peak memory (`profiling`), ONNX Runtime (`onnxruntime`) and the reports that render them (`reports`).
"""
