"""Sprout's Llama and tokenizer as an lm-evaluation-harness ``LM``, in this process.

The harness asks three questions of a model (``lm_eval.api.model.LM``): the log-likelihood of a
continuation after a context, the rolling log-likelihood of a whole text, and a greedy generation
until a stop string. Answering them from the model in memory means no export to disk, and the
same code serves ``sprout eval`` and the evaluation callback during training.

Tokenisation follows the harness's Hugging Face model (``HFLM``): a context's trailing spaces
move to the continuation, the continuation's tokens are those of ``context + continuation``
after the context's, and an empty context or a document start is the end-of-text token, as
Sprout's training data separates documents with it and never uses BOS.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from sprout.data.tokenizer import Tokenizer
from sprout.model import Llama


class SproutLM(LM):
    """Scores and generates with ``model`` on ``device``, ``batch_size`` sequences per forward.

    Sequences longer than the model's ``block_size`` keep their last tokens. Generation is
    greedy (one request at a time, without a KV cache: the model is the training model) and
    stops at the end-of-text token, at any of the task's ``until`` strings or after
    ``max_gen_toks`` tokens (the task's own value first).
    """

    def __init__(
        self,
        model: Llama,
        tokenizer: Tokenizer,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        max_gen_toks: int = 256,
    ) -> None:
        super().__init__()
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.torch_device = torch.device(device)
        self.max_length = model.config.block_size
        self.max_gen_toks = max_gen_toks

    @property
    def device(self) -> torch.device:
        """Where the model runs (lm-eval's ``LM.device``, answered without its private ``_device``)."""
        return self.torch_device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score([self._encode_pair(*request.args) for request in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        windows, owners = [], []
        for n, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tokenizer.encode(text)
            for window in get_rolling_token_windows(
                token_list=tokens,
                prefix_token=self.eot_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                windows.append(make_disjoint_window(window))
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(windows)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests) -> list[str]:
        return [self._generate(*request.args) for request in requests]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.eot_token_id], self.tokenizer.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        return context_ids, whole[len(context_ids) :]

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), continuation is the greedy choice)`` per pair.

        Longest first, so a batch pads little; the head is applied only at the positions that
        predict a continuation token, so ``[batch, length, vocab]`` logits never exist.
        """
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1) :][:-1] for i in batch]
            ids = torch.full((len(batch), max(map(len, inputs))), self.eot_token_id, dtype=torch.long)
            for row, tokens in enumerate(inputs):
                ids[row, : len(tokens)] = torch.tensor(tokens)
            hidden = self.model.hidden_states(ids.to(self.device))
            for row, i in enumerate(batch):
                target = torch.tensor(pairs[i][1][-len(inputs[row]) :], device=self.device)
                end = len(inputs[row])
                logprobs = torch.log_softmax(
                    self.model.output(hidden[row, end - len(target) : end]).float(),
                    dim=-1,
                )
                picked = logprobs.gather(-1, target[:, None]).sum()
                results[i] = (
                    float(picked),
                    bool((logprobs.argmax(-1) == target).all()),
                )
        return results

    @torch.inference_mode()
    def _generate(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        keep = max(
            self.max_length - max_new, self.max_length // 2
        )  # context tokens kept; the window slides as text grows
        ids = (self.tokenizer.encode(context) or [self.eot_token_id])[-keep:]
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            window = torch.tensor([(ids + new)[-self.max_length :]], device=self.device)
            hidden = self.model.hidden_states(window)[:, -1]
            token = int(self.model.output(hidden).argmax(-1))
            if token == self.eot_token_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new)
            if any(stop in text for stop in until):
                break
        cut = min((text.index(stop) for stop in until if stop in text), default=len(text))
        return text[:cut]
