"""Prompt optimization as a production job (docs/prompt-optimization.md).

`calibrators.search_prompts` is the algorithm; this package feeds it: labeled items
(`items`), evaluation by replay through the upstream (`evaluation`), paraphrases from an
OpenAI-compatible endpoint (`paraphraser`), and the resumable job with its state in the store
(`job`). `calib optimize-prompt` and `POST /v1/calibration/models/{model}/prompt-optimizations`
start one.
"""

from service.prompt_opt.evaluation import EvaluationError, ItemResult, Replayer, summarize
from service.prompt_opt.items import LabeledItem, items_from_feedback, read_items, split_items
from service.prompt_opt.job import (
    DEFAULT_SEEDS,
    JobBusy,
    JobConfig,
    JobNotFound,
    create_job,
    get_job,
    run_job,
)
from service.prompt_opt.paraphraser import Paraphraser, few_shot_prompt, parse_paraphrases

__all__ = [
    "DEFAULT_SEEDS",
    "EvaluationError",
    "ItemResult",
    "JobBusy",
    "JobConfig",
    "JobNotFound",
    "LabeledItem",
    "Paraphraser",
    "Replayer",
    "create_job",
    "few_shot_prompt",
    "get_job",
    "items_from_feedback",
    "parse_paraphrases",
    "read_items",
    "run_job",
    "split_items",
    "summarize",
]
