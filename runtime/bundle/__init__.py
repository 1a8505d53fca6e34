"""What a model bundle is: one folder, described and checked by its kedge.json.

manifest.py opens, verifies and writes bundles (the `Bundle`, atomic writes), schema.py says
what a valid kedge.json looks like, forms.py is the one table of forms a bundle can hold,
engines.py names TensorRT engines and reads their sidecars, and shipped.py finds the models
that ship inside kedge (runtime/models/) so a shipped model's name works wherever a bundle does.
"""
