"""The transformers backend: a causal LM with its chat template, optionally with a LoRA adapter (merged).

Besides loading and streaming, it constrains decoding where a small model goes wrong, with logits
processors built once per model load from one pass over the vocabulary (:class:`MarkerVocab`):

* :func:`valid_markers`: a citation marker names a given passage (after ``[`` only the digits 1..k);
* :func:`no_paren_after_marker`: no "（heading）" copied after a marker;
* ``begin_suppress_tokens``: an answer never starts with a marker;
* a stopping criterion for loops and runs of markers (:func:`~ragbot.llm.base.degenerate`).

Every added or special token of the tokenizer found in message text is broken before the chat template
is applied (:func:`neutralize_controls`), so the template's own are the only control tokens in the prompt.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from ragbot.citations import CLOSE, OPEN
from ragbot.errors import ConfigError
from ragbot.llm.base import degenerate
from ragbot.prompt import ZWSP
from ragbot.settings import Settings
from ragbot.types import Message


@dataclass(frozen=True)
class MarkerVocab:
    """Vocabulary ids the generation constraints need, from one decoding pass over the vocabulary."""

    lead: frozenset[int]  # open a marker after spaces ("[", " [1"): never an answer's first token
    closing: frozenset[int]  # end with a closing bracket: never followed by a parenthesis
    paren: frozenset[int]  # open a parenthesis
    opens: frozenset[int]  # just an opening bracket, after spaces or closing brackets: " [", "[", "]["
    chained: frozenset[int]  # the "][" kind of ``opens``: a marker right after another
    digits: tuple[int, ...]  # the tokens "1".."9" (index 0 is "1"), or empty when the tokenizer merges digits
    closes_first: frozenset[int]  # start with a closing bracket: "]", "]。", "]["
    word_end: frozenset[int]  # end with an ASCII letter, digit or "_": a bracket after them is code or maths


def marker_token_ids(tokenizer) -> MarkerVocab:
    """The token sets the generation constraints below need (one decoding pass over the vocabulary)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    open_, close = OPEN, CLOSE

    def ids(keep) -> frozenset[int]:
        return frozenset(i for i, t in enumerate(texts) if t and keep(t))

    def just_open(t: str) -> bool:
        t = t.strip(" ")
        return bool(t) and t[-1] in open_ and all(c in close for c in t[:-1])

    by_text = {t: i for i, t in enumerate(texts)}
    digits = tuple(by_text[str(d)] for d in range(1, 10)) if all(str(d) in by_text for d in range(1, 10)) else ()
    return MarkerVocab(
        lead=ids(lambda t: t.lstrip().startswith(tuple(open_))),
        closing=ids(lambda t: t.rstrip().endswith(tuple(close))),
        paren=ids(lambda t: t.lstrip().startswith(("（", "("))),
        opens=ids(just_open), chained=ids(lambda t: just_open(t) and t.strip(" ")[0] in close),
        digits=digits, closes_first=ids(lambda t: t[0] in close),
        word_end=ids(lambda t: t[-1].isascii() and (t[-1].isalnum() or t[-1] == "_")))


def in_code(text: str) -> bool:
    """Whether the end of ``text`` is inside a code fence or an inline code span."""
    if text.count("```") % 2:
        return True
    return text.replace("```", "").count("`") % 2 == 1


def valid_markers(vocab: MarkerVocab, citable: int, prompt_len: int, decode):
    """A logits processor: a citation marker the model opens names a passage it was given.

    After an opening bracket (one that starts a marker: not after a word, as in ``E[X]`` or ``x[0]``, and
    not inside code) only the digits 1..``citable`` may follow, and after that digit only a closing
    bracket. The fine-tuned model otherwise wrote markers like "[6]" for five passages or "[1,2,3,0]",
    which cleaning had to remove. Single digits only, so ``citable`` is capped at 9. ``decode`` turns
    generated ids into text, for the code check.
    """
    import torch
    from transformers import LogitsProcessor

    digits = vocab.digits[:max(0, min(citable, 9))]
    allowed_digits, digit_set = list(digits), set(digits)
    closes = sorted(vocab.closes_first)

    def marker_opener(row: list[int], pos: int, seq) -> bool:
        """Whether row[pos] (negative; ``row`` ends ``seq``) is a generated bracket opening a citation marker."""
        if -pos > seq.shape[0] - prompt_len or row[pos] not in vocab.opens:
            return False
        if row[pos] not in vocab.chained and len(row) >= -pos + 1 and row[pos - 1] in vocab.word_end:
            return False
        return not in_code(decode(seq[prompt_len:seq.shape[0] + pos + 1].tolist()))

    class ValidMarkers(LogitsProcessor):
        def __call__(self, input_ids, scores):
            # only the last three ids per step as Python ints: the prompt (~1,500 ids) is decoded on a bracket only
            for b, row in enumerate(input_ids[:, -3:].tolist()):
                if marker_opener(row, -1, input_ids[b]):
                    allowed = allowed_digits
                elif len(row) >= 2 and row[-1] in digit_set and marker_opener(row, -2, input_ids[b]):
                    allowed = closes
                else:
                    continue
                keep = torch.full_like(scores[b], float("-inf"))
                keep[allowed] = scores[b, allowed]
                scores[b] = keep
            return scores

    return ValidMarkers()


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
    tokens = sorted((t for t in added | set(tokenizer.all_special_tokens) if len(t) > 1), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens)) or r"(?!)")  # (?!) matches nothing


def neutralize_controls(messages: list[Message], controls: re.Pattern[str]) -> list[Message]:
    """``messages`` with every match of ``controls`` broken by a zero-width space after its first character.

    The chat template then places the only control tokens in the prompt; without this, a document's
    ``<tool_call>`` or ``<|im_start|>`` would be tokenised as the real special token.
    """
    def brk(m: re.Match[str]) -> str:
        return m[0][0] + ZWSP + m[0][1:]

    return [{**m, "content": controls.sub(brk, m["content"])} for m in messages]


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

    def _gen_kwargs(self, max_new_tokens: int, temperature: float, citable: int = 0, prompt_len: int = 0) -> dict:
        kw = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
              # An answer never starts with a citation: the base model otherwise often copied a passage's
              # "[1]（heading）" line, or the prompt's "[1] 或 [2][3]", as its whole answer.
              "begin_suppress_tokens": sorted(self.vocab.lead) if self.vocab and self.vocab.lead else None}
        processors = [self._no_paren] if self._no_paren is not None else []
        if citable and self.vocab is not None and self.vocab.digits:
            processors.append(valid_markers(self.vocab, citable, prompt_len,
                                            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)))
        if processors:
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList(processors)
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=0.9)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def generate(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0) -> str:
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, citable=citable))

    def stream(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0) -> Generator[str, None, str]:
        """Yield the reply as it is decoded, then return why it stopped ("length" at ``max_new_tokens``, else
        "stop"). ``citable`` > 0: markers may only name passages 1..citable."""
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
                                              **self._gen_kwargs(max_new_tokens, temperature, citable, prompt_len))
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
