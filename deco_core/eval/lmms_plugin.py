"""An lmms-eval model adapter for exported DeCo models (optional; install with the ``lmms`` extra).

Registered out of tree through lmms-eval's entry-point group ``lmms_eval.models`` (pyproject.toml)::

    [project.entry-points."lmms_eval.models"]
    deco = "deco_core.eval.lmms_plugin:manifest"

then ``lmms-eval --model deco --model_args pretrained=/path/to/model --tasks pope,mme``. lmms_eval is imported only
when the manifest or the class is asked for; `DecoLMMS` is built on first access (module ``__getattr__``).

Request arguments follow lmms-eval 0.7.x simple tasks: ``generate_until`` gets
``(context, generation_kwargs, doc_to_visual, doc_id, task, split)``; ``loglikelihood`` gets
``(context, continuation, doc_to_visual, doc_id, task, split)`` where the continuation is a string that already
starts with the task's target delimiter (multiple_choice) or the task's ``doc_to_target`` (loglikelihood tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from deco_core.data.prompts import with_image

logger = logging.getLogger(__name__)

MODEL_ID = "deco"
CLASS_PATH = "deco_core.eval.lmms_plugin.DecoLMMS"
DEFAULT_BATCH_SIZE = 8
TARGET_DELIMITER = " "  # lmms-eval's default target_delimiter, put before a doc_to_target continuation


def manifest() -> Any:
    """The entry-point payload: a ``ModelManifest`` pointing lmms-eval at `DecoLMMS` (simple, image-text model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=("deco_core",))


def _user_turn(context: str) -> str:
    """lmms-eval contexts carry no image placeholder: put one image in front, as LLaVA does."""
    return with_image(context)


def _batch_size(value: int | str | None) -> int:
    """lmms-eval's ``batch_size`` (an int, a digit string, or ``auto``) -> a positive int."""
    text = str(value).strip() if value is not None else ""
    if text.isdigit() and int(text) > 0:
        return int(text)
    logger.warning("DecoLMMS: batch_size=%r is not a positive int; using %d", value, DEFAULT_BATCH_SIZE)
    return DEFAULT_BATCH_SIZE


def _stop_strings(until: str | Sequence[str] | None) -> list[str]:
    """``generation_kwargs['until']`` (a string, a list or nothing) -> the non-empty stop strings."""
    if until is None:
        return []
    return [s for s in ([until] if isinstance(until, str) else until) if s]


def _continuation(target: str | Callable[[dict], Any], doc: dict) -> str:
    """The text scored by loglikelihood: a multiple_choice continuation as given (it holds its delimiter), or a
    loglikelihood task's ``doc_to_target(doc)`` after the default delimiter."""
    if callable(target):
        return TARGET_DELIMITER + str(target(doc))
    return str(target)


def _build_class() -> type:
    """Build `DecoLMMS` (imports lmms_eval and torch; called on first access of the attribute)."""
    import torch
    from lmms_eval.api.model import lmms

    from deco_core.data.transforms import ImageTransform
    from deco_core.eval.generate import decode_new_tokens, encode_prompts, load_model

    class DecoLMMS(lmms):
        """Greedy, batched generation with an exported DecoModel (one image per request, vicuna_v1 template)."""

        is_simple = True

        def __init__(self, pretrained: str, batch_size: int | str = DEFAULT_BATCH_SIZE, device: str | None = None,
                     max_new_tokens: int = 128, **kwargs: Any) -> None:
            super().__init__()
            unknown = sorted(k for k, v in kwargs.items() if v is not None)
            if unknown:
                logger.warning("DecoLMMS: ignoring unknown model_args %s", unknown)
            self.model_name = pretrained
            self.model = load_model(pretrained, device=device or "cpu")
            self.transform = ImageTransform.from_vision_config(self.model.cfg.vision)
            self.batch_size = _batch_size(batch_size)
            self.default_max_new_tokens = int(max_new_tokens)

        @property
        def device(self) -> torch.device:
            """Where the model's weights live."""
            return next(self.model.parameters()).device

        def _pixels(self, visuals: list | None) -> torch.Tensor:
            """The first image of a doc -> pixel values [3, S, S]; a doc without an image is an error."""
            if not visuals:
                raise ValueError("DecoLMMS needs one image per request; the doc has no visual")
            if len(visuals) > 1:
                logger.debug("DecoLMMS: %d visuals in one doc; using the first", len(visuals))
            return torch.as_tensor(self.transform(visuals[0]))  # [3, S, S]

        @torch.no_grad()
        def generate_until(self, requests: list) -> list[str]:
            """Greedy answers, cut at the first stop string of each request's ``until``."""
            outputs: list[str] = []
            for start in range(0, len(requests), self.batch_size):
                chunk = [r.args for r in requests[start:start + self.batch_size]]
                prompts = [_user_turn(ctx) for ctx, *_ in chunk]
                pixels = [self._pixels(to_visual(self.task_dict[task][split][doc_id]))
                          for _, _, to_visual, doc_id, task, split in chunk]
                max_new = max(int((kw or {}).get("max_new_tokens") or self.default_max_new_tokens)
                              for _, kw, *_ in chunk)
                ids, mask = encode_prompts(self.model, prompts)  # [B, T] each
                new = self.model.generate(ids.to(self.device), mask.to(self.device),
                                          torch.stack(pixels).to(self.device),  # [B, 3, S, S]
                                          torch.ones(len(chunk), dtype=torch.bool, device=self.device),
                                          max_new_tokens=max_new)
                for text, (_, kw, *_) in zip(decode_new_tokens(self.model, new), chunk, strict=True):
                    for stop in _stop_strings((kw or {}).get("until")):
                        text = text.split(stop)[0]
                    outputs.append(text.strip())
            return outputs

        @torch.no_grad()
        def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
            """(sum of log p(continuation | image, context), whether greedy decoding yields the continuation)."""
            results = []
            tok = self.model.tokenizer
            for ctx, target, to_visual, doc_id, task, split in (r.args for r in requests):
                doc = self.task_dict[task][split][doc_id]
                ids, _ = encode_prompts(self.model, [_user_turn(ctx)])  # [1, T]
                cont = torch.tensor([tok(_continuation(target, doc), add_special_tokens=False)["input_ids"]])  # [1, C]
                if cont.shape[1] == 0:
                    raise ValueError(f"DecoLMMS: empty continuation for {task} doc {doc_id}")
                full = torch.cat([ids, cont], dim=1).to(self.device)  # [1, T + C]
                pixels = self._pixels(to_visual(doc)).unsqueeze(0).to(self.device)  # [1, 3, S, S]
                logits = self.model(full, torch.ones_like(full), pixels).logits  # [1, T + C, V]
                logp = logits[0, ids.shape[1] - 1:-1].float().log_softmax(-1)  # [C, V]
                cont = cont[0].to(self.device)  # [C]
                chosen = logp.gather(-1, cont.unsqueeze(-1)).squeeze(-1)  # [C]
                results.append((float(chosen.sum()), bool((logp.argmax(-1) == cont).all())))
            return results

        def generate_until_multi_round(self, requests: list) -> list[str]:
            """Not supported: DeCo answers single-round requests only."""
            raise NotImplementedError("DecoLMMS answers single-round requests only")

    return DecoLMMS


def __getattr__(name: str) -> Any:
    """Build `DecoLMMS` lazily, so importing this module never needs lmms_eval."""
    if name == "DecoLMMS":
        cls = _build_class()
        globals()["DecoLMMS"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
