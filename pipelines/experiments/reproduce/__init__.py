"""The reproduce experiment: run (entry point), and its helpers."""
