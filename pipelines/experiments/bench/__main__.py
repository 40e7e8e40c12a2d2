"""``python -m pipelines.experiments.bench``: see pipelines.experiments.bench.run."""

from pipelines.experiments.bench.run import main

if __name__ == "__main__":
    main()
