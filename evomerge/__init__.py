"""evomerge: evolutionary search of LLM merge coefficients.

The pipeline, one module per stage:
search space (space.py) -> genome (genome.py) -> merge recipe (recipe.py) -> merged weights on a worker
(methods/, tensors.py, merge.py, worker.py) -> scores on eval sets (evalsets.py, scorers.py, backends/) ->
fitness (fitness.py) -> optimizer (optimizers/) -> ledger (ledger.py, an Optuna study) -> export (export.py).

Importing the package is cheap: torch, transformers, ray and optuna are imported only by the modules that use them.
"""

__version__ = "0.1.0"
