"""Compare architectures in one command: train architectures x seeds, then ask whether MEIs (GA vs EGG)
made on one architecture's ensemble drive held-out seeds, other architectures and (on a twin) the true
neurons, how fast each method is, and how alike the architectures' representations are.

    encoders compare experiments/compare_twin.yaml

config.py (the spec, read by jsonargparse with train.py's data/model/trainer blocks and the products'
methods), grid.py (each model trained by train.py on a config it writes), accuracy.py (test metrics,
neuron choice), meis.py (one MEI set), scoring.py (models and ground truth as scorers),
generalisation.py (within / cross / ground-truth scores), similarity.py (model-vs-model measures),
figures.py and report.py, run.py (the pipeline). Every cache is the product store's.
"""
