"""The transformers backend: a causal LM with its chat template, optionally with a LoRA adapter (merged).

Besides loading and streaming, it constrains decoding where a small model goes wrong, with logits
processors built once per model load from one pass over the vocabulary (:class:`MarkerVocab`):

* :func:`valid_markers`: a citation marker names a given passage (after ``[`` only the digits 1..k);
* :func:`no_paren_after_marker`: no "（heading）" copied after a marker;
* ``begin_suppress_tokens``: an answer never starts with a marker;
* :func:`no_echo`: an answer never just says the question back (:class:`~ragbot.llm.constraints.EchoRule`);
* a stopping criterion for loops and runs of markers (:func:`~ragbot.llm.base.degenerate`).

Every added or special token of the tokenizer found in message text is broken before the chat template
is applied (:func:`neutralize_controls`), so the template's own are the only control tokens in the prompt.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator, Sequence

from ragbot.errors import ConfigError
from ragbot.llm.base import control_pattern, degenerate, neutralize_controls
from ragbot.llm.constraints import EchoRule, MarkerRules, MarkerVocab
from ragbot.settings import Settings
from ragbot.types import Message


def marker_token_ids(tokenizer) -> MarkerVocab:
    """The token sets the generation constraints need (one decoding pass over the vocabulary)."""
    return MarkerVocab.from_texts(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def valid_markers(vocab: MarkerVocab, citable: int, prompt_len: int, decode):
    """A logits processor for :meth:`MarkerRules.allowed <ragbot.llm.constraints.MarkerRules.allowed>`: a
    citation marker the model opens names a passage it was given (1..``citable``)."""
    import torch
    from transformers import LogitsProcessor

    rules = MarkerRules(vocab, citable, decode)

    class ValidMarkers(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for b, row in enumerate(input_ids[:, prompt_len:].tolist()):
                allowed = rules.allowed(row)
                if allowed is None:
                    continue
                keep = torch.full_like(scores[b], float("-inf"))
                keep[allowed] = scores[b, allowed]
                scores[b] = keep
            return scores

    return ValidMarkers()


def no_echo(rule: EchoRule, prompt_len: int):
    """A logits processor for :meth:`EchoRule.banned <ragbot.llm.constraints.EchoRule.banned>`: the answer
    does not just say the question back."""
    from transformers import LogitsProcessor

    class NoEcho(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for b, row in enumerate(input_ids[:, prompt_len:].tolist()):
                banned = rule.banned(row)
                if banned:
                    scores[b, [i for i in banned if i < scores.shape[-1]]] = float("-inf")
            return scores

    return NoEcho()


def no_paren_after_marker(closing: Sequence[int], paren: Sequence[int]):
    """A logits processor: a token that closes a bracket is never followed by an opening parenthesis.

    Small models copied a passage's header, "[2]（heading path）", into their answers; a real answer
    cites "[2]" and goes on with text, so this forbids the copy without touching anything else.
    """
    import torch
    from transformers import LogitsProcessor

    class NoParenAfterMarker(LogitsProcessor):
        def __init__(self) -> None:
            self.closing = torch.tensor(sorted(closing), dtype=torch.long)
            self.paren_mask: torch.Tensor | None = None

        def __call__(self, input_ids, scores):
            after_close = torch.isin(input_ids[:, -1], self.closing.to(input_ids.device))
            if not bool(after_close.any()):
                return scores
            if self.paren_mask is None or self.paren_mask.shape[0] != scores.shape[-1]:
                self.paren_mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
                self.paren_mask[[i for i in paren if i < scores.shape[-1]]] = True
            return scores.masked_fill(after_close[:, None] & self.paren_mask[None, :], float("-inf"))

    return NoParenAfterMarker()


def control_tokens(tokenizer) -> re.Pattern[str]:
    """A pattern for every string ``tokenizer`` reads as one added or special token, longest first.

    Whitespace and plain-word added tokens (some code models add runs of spaces) carry no control
    meaning and stay; one-character tokens cannot be broken by an insertion. Everything else counts:
    ``<|im_end|>``, ``<tool_call>``, ``[INST]``, ``<s>``.
    """
    added = {t for t in tokenizer.get_added_vocab() if not t.isspace() and not t.isalnum()}
    return control_pattern(added | set(tokenizer.all_special_tokens))


class HFChatModel:
    """A transformers causal LM with its chat template, optionally with a LoRA adapter (merged for speed)."""

    def __init__(self, spec: str, models_dir, *, adapter: str = "", device: str = "auto", precision: str = "auto",
                 allow_downloads: bool = False, num_threads: int = 0) -> None:
        self.spec, self.models_dir, self.adapter, self.precision = spec, models_dir, adapter, precision
        self.device, self.allow_downloads, self.num_threads = device, allow_downloads, num_threads
        self._no_paren = None  # logits processor, built with the tokenizer
        self.vocab: MarkerVocab | None = None
        self.model = None
        self.tokenizer = None
        self._controls: re.Pattern[str] | None = None  # the tokenizer's control tokens, on first use
        self._lock = threading.Lock()  # one generation at a time: the app serves several browser sessions

    @classmethod
    def from_settings(cls, settings: Settings) -> HFChatModel:
        return cls(settings.llm, settings.models_dir, adapter=settings.adapter, device=settings.device,
                   precision=settings.llm_precision, allow_downloads=settings.allow_downloads,
                   num_threads=settings.num_threads)

    def warm_up(self) -> None:
        if self.model is not None:
            return
        import warnings

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")

        from ragbot.bundle import resolve_model
        from ragbot.embedder import resolve_device

        hf_logging.disable_progress_bar()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        path = resolve_model(self.spec, self.models_dir, allow_downloads=self.allow_downloads)
        device = resolve_device(self.device)
        precision = self.precision if self.precision != "auto" else ("bf16" if device == "cuda" else "int8")
        if precision == "int8" and device != "cpu":
            raise ConfigError(f"llm_precision 'int8' (dynamic quantisation) runs on the CPU only; use bf16 on {device}")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.vocab = marker_token_ids(self.tokenizer)
        self._no_paren = no_paren_after_marker(self.vocab.closing, self.vocab.paren)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if self.adapter:
            from peft import PeftModel

            # merged: the adapter then costs nothing at inference, and the merged weights can be quantised
            model = PeftModel.from_pretrained(model, self.adapter).merge_and_unload()
        if precision == "int8":
            # On CPUs without bf16 units (AVX2), bf16 matmuls are emulated: prefill ran at ~36 tok/s here.
            # Dynamic int8 (per-channel weights, fbgemm) measured ~330-460 tok/s prefill and ~17-20 tok/s decode.
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8,
                inplace=True)  # in place: no second fp32 copy at load (peak memory)
        self.precision_used = precision
        self.model = model.to(device).eval()

    def chat_template(self, messages: list[Message], **kwargs):
        """``tokenizer.apply_chat_template`` (with the generation prompt) over messages whose contents can
        hold no control token of this tokenizer: the template's own are the only ones in the prompt."""
        if self._controls is None:
            self._controls = control_tokens(self.tokenizer)
        return self.tokenizer.apply_chat_template(neutralize_controls(messages, self._controls),
                                                  add_generation_prompt=True, **kwargs)

    def _inputs(self, messages: list[Message]):
        enc = self.chat_template(messages, return_tensors="pt", return_dict=True)
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def _stopping(self, prompt_len: int):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class StopOnDegeneration(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = [degenerate(row[prompt_len:].tolist(), tokenizer.decode(row[-24:], skip_special_tokens=True))
                        for row in input_ids]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([StopOnDegeneration()])

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, citable: int = 0, prompt_len: int = 0,
                    question: str = "") -> dict:
        kw = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
              # An answer never starts with a citation: the base model otherwise often copied a passage's
              # "[1]（heading）" line, or the prompt's "[1] 或 [2][3]", as its whole answer.
              "begin_suppress_tokens": sorted(self.vocab.lead) if self.vocab and self.vocab.lead else None}
        processors = [self._no_paren] if self._no_paren is not None else []
        if citable and self.vocab is not None and self.vocab.digits:
            processors.append(valid_markers(self.vocab, citable, prompt_len,
                                            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)))
        if question and self.vocab is not None:
            processors.append(no_echo(EchoRule(question, self.vocab, self._stops(), lambda ids: self.tokenizer.decode(
                ids, skip_special_tokens=True)), prompt_len))
        if processors:
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(processors)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=0.9)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _stops(self) -> frozenset[int]:
        """The ids that end a generation, and the special ones that write nothing (skipped when decoding)."""
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        return frozenset(ids + list(self.tokenizer.all_special_ids))

    def generate(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0, question: str = "") -> str:
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, citable=citable,
                                   question=question))

    def stream(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0, question: str = "") -> Generator[str, None, str]:
        """Yield the reply as it is decoded, then return why it stopped ("length" at ``max_new_tokens``, else
        "stop"). ``citable`` > 0: markers may only name passages 1..citable; ``question``: the reply may not
        just say it back (:class:`~ragbot.llm.constraints.EchoRule`)."""
        import torch
        from transformers import TextIteratorStreamer

        self.warm_up()
        inputs = self._inputs(messages)
        prompt_len = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        errors: list[BaseException] = []
        generated: list[int] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    out = self.model.generate(**inputs, streamer=streamer, stopping_criteria=self._stopping(prompt_len),
                                              **self._gen_kwargs(max_new_tokens, temperature, citable, prompt_len,
                                                                 question))
                generated.append(int(out.shape[1]) - prompt_len)
            except BaseException as e:  # surface generation errors in the caller's thread
                errors.append(e)
                streamer.end()

        with self._lock:
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            yield from streamer
            thread.join()
        if errors:
            raise errors[0]
        return "length" if generated and generated[0] >= max_new_tokens else "stop"

    def generate_batch(self, conversations: list[list[Message]], *, max_new_tokens: int = 256,
                       temperature: float = 0.0) -> list[str]:
        """Several conversations at once (left-padded): decoding is memory-bound, so a batch costs little more."""
        import torch

        self.warm_up()
        texts = [self.chat_template(m, tokenize=False) for m in conversations]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
        finally:
            self.tokenizer.padding_side = side
        with self._lock, torch.inference_mode():
            out = self.model.generate(**enc, stopping_criteria=self._stopping(enc["input_ids"].shape[1]),
                                      **self._gen_kwargs(max_new_tokens, temperature))
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def count_tokens(self, messages: list[Message]) -> int:
        self.warm_up()
        return int(self._inputs(messages)["input_ids"].shape[1])
