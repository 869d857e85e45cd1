"""The fused graph and what runs it.

fused (segmenter → sigmoid mask → concat → classifier as one module, TorchScript) ·
cpu_fusion (the CPU rewrite of that graph) · trt (Torch-TensorRT FP16) · onnx_graph (the
portable graph for ONNX Runtime and OpenVINO) · backends (the registry: one `Backend` per
runtime, with where it runs, its precisions, and how it builds, exports and loads) · spec
(`ArtifactSpec`, the sidecar as a typed, validated contract) · artifact (the exported file and
its sidecar on disk: write, read, verify, the newest one) · operating (operating points and
label rules) · predictor (`Predictor`, one call interface over every backend) · runtime
(`build_predictor` from a model, `load_predictor` from an artifact) · forward (the fused
forward that training, evaluation and scoring share).
"""
