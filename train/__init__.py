"""Training side: the two published architectures, data handling, fitting, evaluation.

TensorFlow is imported only inside the functions that need it (through
kedge.train.tfkeras), so `import kedge.runtime.checks.synthetic` works on a lean install.
"""
