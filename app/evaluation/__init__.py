"""Downstream evaluation through lm-evaluation-harness: the model adapter (``lm``), task names
(``tasks``, with Sprout's offline tasks in ``local_tasks/``) and running them (``harness``).

Importing this package does not import lm-eval (an optional extra); ``evaluate`` does.
"""

from sprout.evaluation.harness import evaluate, require_harness, scores, write_results

__all__ = ["evaluate", "require_harness", "scores", "write_results"]
