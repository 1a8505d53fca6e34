"""What kedge tells a person about a model and its readings.

metrics.py and evaluate.py score a predictor on labelled images, card.py prints a bundle's
model card (`kedge card`), shortcut.py and shortcut_plot.py are the shortcut audit (`kedge
audit`), explain.py maps what drove a prediction (`kedge explain`), bench.py times every pair
and bench_report.py prints it (`kedge bench`), and audit_trail.py appends one JSON line per
automated reading (`kedge infer --audit`).
"""
