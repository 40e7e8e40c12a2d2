"""An lmms-eval model adapter for exported DeCo models (optional; lmms-eval is not a dependency).

Register it out of tree through lmms-eval's entry-point group ``lmms_eval.models``, e.g. in pyproject.toml::

    [project.entry-points."lmms_eval.models"]
    deco = "deco_core.eval.lmms_plugin:manifest"

then ``lmms-eval --model deco --model_args pretrained=/path/to/model --tasks pope,mme``. lmms_eval is imported only
when the manifest or the class is asked for; `DecoLMMS` is built on first access (module ``__getattr__``).
"""

from __future__ import annotations

import logging
from typing import Any

from deco_core.data.prompts import with_image

logger = logging.getLogger(__name__)

MODEL_ID = "deco"
CLASS_PATH = "deco_core.eval.lmms_plugin.DecoLMMS"


def manifest():
    """The entry-point payload: a ``ModelManifest`` pointing lmms-eval at `DecoLMMS` (simple, image-text model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=("deco_core",))


def _user_turn(context: str) -> str:
    """lmms-eval contexts carry no image placeholder: put one image in front, as LLaVA does."""
    return with_image(context)


def _build_class() -> type:
    import torch
    from lmms_eval.api.model import lmms

    from deco_core.data.transforms import ImageTransform
    from deco_core.eval.generate import decode_new_tokens, encode_prompts, load_model

    class DecoLMMS(lmms):
        """Greedy, batched generation with an exported DecoModel (one image per request, vicuna_v1 template)."""

        is_simple = True

        def __init__(self, pretrained: str, batch_size: int | str = 8, device: str = "cpu",
                     max_new_tokens: int = 128, **kwargs: Any) -> None:
            super().__init__()
            if kwargs:
                logger.warning("DecoLMMS: ignoring unknown model_args %s", sorted(kwargs))
            self.model_name = pretrained
            self.model = load_model(pretrained, device=device)
            self.transform = ImageTransform.from_vision_config(self.model.cfg.vision)
            self.batch_size = int(batch_size)
            self.default_max_new_tokens = int(max_new_tokens)

        def _pixels(self, visuals: list) -> torch.Tensor:
            if not visuals:
                raise ValueError("DecoLMMS needs one image per request; the doc has no visual")
            return torch.as_tensor(self.transform(visuals[0]))  # [3, S, S]; extra images are ignored

        @torch.no_grad()
        def generate_until(self, requests) -> list[str]:
            outputs: list[str] = []
            for start in range(0, len(requests), self.batch_size):
                chunk = [r.args for r in requests[start:start + self.batch_size]]
                prompts = [_user_turn(ctx) for ctx, *_ in chunk]
                pixels = [self._pixels(to_visual(self.task_dict[task][split][doc_id]))
                          for _, _, to_visual, doc_id, task, split in chunk]
                max_new = max(int(kw.get("max_new_tokens", self.default_max_new_tokens)) for _, kw, *_ in chunk)
                device = next(self.model.parameters()).device
                ids, mask = encode_prompts(self.model, prompts)
                new = self.model.generate(ids.to(device), mask.to(device), torch.stack(pixels).to(device),
                                          torch.ones(len(chunk), dtype=torch.bool, device=device),
                                          max_new_tokens=max_new)
                texts = decode_new_tokens(self.model, new)
                for text, (_, kw, *_) in zip(texts, chunk, strict=True):
                    for stop in kw.get("until", []) or []:
                        text = text.split(stop)[0] if stop else text
                    outputs.append(text.strip())
            return outputs

        @torch.no_grad()
        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            results = []
            tok = self.model.tokenizer
            for ctx, to_target, to_visual, doc_id, task, split in (r.args for r in requests):
                doc = self.task_dict[task][split][doc_id]
                target = to_target(doc) if callable(to_target) else str(to_target)
                ids, mask = encode_prompts(self.model, [_user_turn(ctx)])
                cont = torch.tensor([tok(" " + str(target), add_special_tokens=False)["input_ids"]])  # [1, C]
                full = torch.cat([ids, cont], dim=1)
                device = next(self.model.parameters()).device
                logits = self.model(full.to(device), torch.ones_like(full).to(device),
                                    self._pixels(to_visual(doc)).unsqueeze(0).to(device)).logits  # [1, T, V]
                logp = logits[0, ids.shape[1] - 1:-1].float().log_softmax(-1)  # [C, V]
                chosen = logp.gather(-1, cont[0].to(device).unsqueeze(-1)).squeeze(-1)
                results.append((float(chosen.sum()), bool((logp.argmax(-1) == cont[0].to(device)).all())))
            return results

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError("DecoLMMS answers single-round requests only")

    return DecoLMMS


def __getattr__(name: str) -> Any:
    if name == "DecoLMMS":
        cls = _build_class()
        globals()["DecoLMMS"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
