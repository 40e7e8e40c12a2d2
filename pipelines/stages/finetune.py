"""Stage finetune: instruction tuning (``vicuna_v1``) from the pretrain export; projector + LLM trainable."""

from __future__ import annotations

from typing import Any

from pipelines.stages.common import stage_main
from pipelines.stages.pretrain import train


def run(ctx) -> dict[str, Any]:
    init = ctx.cfg.finetune.init_from or ctx.inputs["pretrain"]["model"]
    return train(ctx, "finetune", init_from=init)


if __name__ == "__main__":
    stage_main("finetune")
