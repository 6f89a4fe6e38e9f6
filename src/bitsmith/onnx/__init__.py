"""ONNX export of an IntegerGraph and its onnxruntime runner (bitsmith.verify compares it with the engine).

    path = export_onnx(graph, "model.onnx")             # integer model: same codes as engine.run(graph, x)
    codes = run_onnx(path, images)                       # onnxruntime CPU, int64 codes
    export_onnx(graph, "model_qdq.onnx", qdq=True)       # QuantizeLinear/DequantizeLinear model
"""

from bitsmith.onnx.export import export_onnx, run_onnx

__all__ = ["export_onnx", "run_onnx"]
