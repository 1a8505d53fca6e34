"""The lean part that ships to the device: decoding, preprocessing, bundles, metrics.

Nothing here imports TensorFlow, kedge.train or kedge.export (a test checks).
"""
