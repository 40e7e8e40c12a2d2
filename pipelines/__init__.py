"""The orchestration layer over deco_core: the ``deco`` root CLI (cli), the workflow engine (workflow), its stages
(stages), operations (ops: submit, retrain, runtime) and experiments (bench, reproduce, results)."""
