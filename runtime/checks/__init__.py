"""Whether a form may run on this machine, and which one does.

parity.py holds every (backend, form, precision) pair to the Keras original on labelled
images (at export), golden.py re-runs a bundle's golden set on this machine, and choice.py
picks the pair (`--backend`, `--precision`, `auto`) from those two results. synthetic.py
draws the synthetic knees the golden set is made of (and `kedge synth` and the tests).
"""
