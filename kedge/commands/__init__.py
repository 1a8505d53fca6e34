"""The `kedge` commands, one module per stage, each listing its commands in COMMANDS:

- train: the data and the model (models, dataset, synth, train, evaluate, rebuild);
- export: the deployable forms and their proof (export, parity, golden, envelope, ship);
- run: using a model (infer, explain, bench, preprocess);
- check: what a machine and a bundle hold (info, card, check-trt, verify, audit);
- serve: Triton (serve).

A command reads its options (kedge/options.py declares the shared ones), calls the
library function that does the work, and prints; kedge/cli.py assembles the group.
Heavy imports happen inside the commands, so listing them loads neither numpy nor OpenCV.
"""
