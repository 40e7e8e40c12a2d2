"""DeCo: decoupled token compression for multimodal LLMs — model, data, training, evaluation, analysis.

``import deco_core`` stays light (no torch, no transformers). Importing ``deco_core.model.deco`` (where
``DecoModel`` lives) registers the ``deco`` model type with transformers' ``AutoConfig`` and
``AutoModelForImageTextToText``; ``register_auto_classes()`` does the same explicitly.
"""

__version__ = "0.1.0"


def register_auto_classes() -> None:
    """Register ``model_type: "deco"`` with transformers' auto classes (idempotent; imports transformers)."""
    from deco_core.model.deco import DecoModel
    from deco_core.model.hf import register_auto_classes as register

    register(DecoModel)
