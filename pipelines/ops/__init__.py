"""Operations around the workflow: cluster submission, scheduled retraining and the Ray runtime."""
