"""Export side: Keras to ONNX (tf2onnx), FP16 forms and TensorRT engines."""
