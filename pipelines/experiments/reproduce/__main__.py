"""``python -m pipelines.experiments.reproduce``: see pipelines.experiments.reproduce.run."""

from pipelines.experiments.reproduce.run import main

if __name__ == "__main__":
    main()
