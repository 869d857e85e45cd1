"""The fused graph and what runs it.

fused (segmenter → sigmoid mask → concat → classifier as one module, TorchScript) ·
cpu_fusion (the CPU rewrite of that graph) · trt (Torch-TensorRT FP16) · onnx_graph (the
portable graph for ONNX Runtime and OpenVINO) · backends (which backend runs where, at which
precision) · artifact (the exported file and its sidecar) · operating (operating points and
label rules) · runtime (Predictor: build one from a model, load one from an artifact) ·
forward (the fused forward that training, evaluation and scoring share).
"""
