"""The lean part that ships to the device: images in, checked class probabilities out.

Nothing here imports TensorFlow, kedge.train or kedge.export (tests/test_cli_lean.py checks
every module, sub-packages included). One sub-package per job:

- inputs/: the input wall, where an image file becomes the model's input tensor or a
  one-line refusal (preprocessing, headers and size limits, DICOM), and finding labelled
  images and their sources on disk;
- bundle/: what a model bundle is (kedge.json and its schema, the table of forms, TensorRT
  engine names, finding the shipped models in models/);
- checks/: whether a form may run here and which one does (parity, the golden set and its
  synthetic knees, the choice of pair);
- envelope/: the input envelope, which withholds answers on images unlike the validated ones;
- reports/: what a person reads (metrics and evaluation, the model card, the shortcut audit,
  explanations, benchmarks, the audit trail of readings);
- backends/: the registry of backends (ONNX Runtime, OpenVINO, TensorRT, Triton) and the
  `Pair` they open.

At the top: infer.py (the path `kedge infer` takes), serve.py (`kedge serve`), info.py
(`kedge info`), the machine's cpu.py and cuda.py, and errors.py (the one exception the CLI
prints as one line).
"""
