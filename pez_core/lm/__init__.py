"""PEZ for causal language models: hard prompts that make an LM classify text (Wen et al., 2023).
``model`` loads a Hugging Face LM (transformers is imported there, on use), ``task`` scores prompts on a
classification task and learns them, ``data`` reads examples. The ``lm`` subcommand lives in ``pez_core.cli``."""
from .data import Example, few_shot, load_examples, parse_verbalizer
from .model import (DEMO_LM, DEMO_TRANSFER_LM, LanguageModel, bundled_lm, check_lm, lm_allowed_ids, load_lm,
                    token_texts)
from .task import (DEFAULT_BATCH, DEFAULT_PROMPT_LEN, LmScorer, PromptScore, Template, Verbalizer, evaluate_prompt,
                   evaluate_prompts, learn_prompt, prompt_report)

DEMO_TEMPLATE = "{input} {prompt} it was"
DEMO_VERBALIZER = "positive:great,negative:terrible"
DEMO_STEPS, DEMO_RESTARTS = 200, 4     # the demo's run: about a minute on one CPU core

__all__ = ["DEFAULT_BATCH", "DEFAULT_PROMPT_LEN", "DEMO_LM", "DEMO_RESTARTS", "DEMO_STEPS", "DEMO_TEMPLATE",
           "DEMO_TRANSFER_LM", "DEMO_VERBALIZER", "Example", "LanguageModel", "LmScorer", "PromptScore", "Template",
           "Verbalizer", "bundled_lm", "check_lm", "evaluate_prompt", "evaluate_prompts", "few_shot",
           "learn_prompt", "lm_allowed_ids", "load_examples", "load_lm", "parse_verbalizer", "prompt_report",
           "token_texts"]
