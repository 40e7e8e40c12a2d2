"""The bench experiment: run (entry point), and its helpers."""
