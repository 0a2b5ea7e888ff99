"""Pure graph analysis and surgery for structured filter pruning of ONNX models.

The flow is: ``prepare_model`` (fold constants, infer shapes) -> ``analyze`` (channel
dependency groups) -> a criterion scores each group's channels -> selection builds a
``PruningPlan`` -> ``apply_plan`` rewrites the graph. Nothing here imports a web or
queue framework; only ``apply_plan`` produces a changed model.
"""
