"""DeCo: decoupled token compression for multimodal LLMs — model, data, training, evaluation, analysis."""

__version__ = "0.1.0"
