"""ONNX <-> PyTorch round trip: run an ONNX graph as a torch module, train it, write weights back.

Data-driven pruning (Taylor, activation criteria, fine-tuning) needs gradients; users bring an ONNX
file and data, not training code. This package runs the graph itself with torch operations and
writes trained weights into the same graph by initializer name. Nothing here imports torch at
import time: weight-norm jobs and the API process never load it.
"""
