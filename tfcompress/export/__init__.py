"""Keras model → deployable file: ``.tflite`` (`tflite`, `converter`), ``.onnx`` (`onnx`), C arrays (`firmware`).

Also per-layer int8 sensitivity and the accuracy budget
(`sensitivity`), and the Keras-vs-TFLite parity check during training (`parity_callback`). It builds on
`tfcompress.core`, the techniques and `tfcompress.evaluation`.
"""
