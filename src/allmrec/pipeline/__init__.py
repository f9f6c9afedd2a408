"""The pipeline behind the CLI: a run's configuration (:mod:`.config`), its folder and what it
holds (:mod:`.resources`), and the steps that fill it (:mod:`.steps`).

    raw data -> prepared dataset (cache) -> CF model (run/cf) -> stage 1 (run/stage1)
             -> stage 2 (run/stage2) -> evaluation (run/results)
"""

from allmrec.pipeline.config import EvalOptions, PipelineConfig, RunConfig, demo_config_file
from allmrec.pipeline.resources import Resources, RunFolder

__all__ = ["EvalOptions", "PipelineConfig", "Resources", "RunConfig", "RunFolder", "demo_config_file"]
