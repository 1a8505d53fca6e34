"""The input envelope (docs/envelope.md): is an image like the images the model was validated on?

gate.py is the envelope itself (the image features, the distance, the inside/outside check
`kedge infer` applies, envelope.json), fit.py fits it from a bundle's own split, report.py
measures what it keeps and refuses (`kedge envelope --report`) on the images outsiders.py
makes, and audit.py is its part of `kedge audit`.
"""
