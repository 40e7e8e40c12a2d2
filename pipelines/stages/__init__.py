"""The workflow's stages: each module's ``run(ctx: StageContext) -> dict`` (registered in pipelines.workflow.dag)."""
