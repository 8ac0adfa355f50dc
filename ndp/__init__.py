"""ndp: near-data (computational storage) training of recommendation models in JAX.

Modules:

* :mod:`ndp.configs` — Criteo Kaggle table sizes (row cap, scale) and DLRM configurations.
* :mod:`ndp.data.synthetic` — streamed Criteo-like batches with Zipf index skew and skew statistics.
* :mod:`ndp.data.movielens`, :mod:`ndp.data.criteo` — MovieLens-100k and Criteo TSV loaders.
* :mod:`ndp.embedding` — tables sharded over the ``storage`` mesh axis: plans, lookups, sparse updates.
* :mod:`ndp.model` — the dense DLRM head (flax NNX) and biased matrix factorisation.
* :mod:`ndp.train` — the jitted, donating training step; :mod:`ndp.trainer` — the training job.
* :mod:`ndp.sysmodel` — the performance/energy model of near-data training systems.
"""
