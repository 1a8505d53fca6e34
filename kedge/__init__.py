"""kedge: knee X-ray osteoporosis classifiers, from training to the edge.

The subpackages live in the repository's top-level folders (see setup.cfg):
kedge.runtime (lean, ships to the device), kedge.train, kedge.export and
kedge.calibration. Importing kedge imports none of them.
"""
__version__ = "0.1.0"
