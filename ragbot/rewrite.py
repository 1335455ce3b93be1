"""Multi-turn chat: rewrite a follow-up ("那它和全参数微调比呢？") into a question that stands alone.

Retrieval sees one question at a time, so "它" must become "LoRA" before searching. The local LLM
does the rewrite with a short prompt; a 0.5B model sometimes answers instead of rewriting or
drops the subject, so its output is checked and, when unusable, replaced by a deterministic
rewrite that prefixes the previous question's key terms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragbot.grounding import key_terms as latin_terms
from ragbot.settings import REFUSAL

ChatFn = Callable[[list[dict[str, str]]], str]

REWRITE_SYSTEM = (
    "你是对话改写助手。请结合对话历史，把用户最后的追问改写成一个完整、独立、不看历史也能理解的问题："
    "把“它”“这个”“那”等指代换成历史中的具体对象，补全省略的主语。"
    "只输出改写后的问题本身，不要回答问题，不要解释。"
)
# Words that make a question lean on what came before.
_ANAPHORA = ("它", "其", "该", "此", "这", "那", "上述", "前者", "后者", "两者", "二者", "他们", "她们", "上面", "刚才")
_LEADING = ("和", "与", "跟", "而", "还有", "另外", "以及", "那么", "那", "再", "也", "呢", "为什么")
_STOPWORDS = {
    "什么", "为什么", "如何", "怎么", "怎样", "怎么样", "哪些", "哪个", "哪种", "多少", "是否", "可以", "能够", "能否",
    "一般", "主要", "通常", "需要", "这个", "那个", "这些", "那些", "它们", "我们", "你们", "有没有", "时候", "的话",
    "请问", "一下", "介绍", "解释", "说说", "是不是", "有什么", "为何", "哪里", "以及", "还是", "或者", "因为", "所以",
}
MAX_HISTORY_TURNS = 2  # user+assistant pairs shown to the rewriter
MAX_ANSWER_CHARS = 160


@dataclass(frozen=True)
class Rewrite:
    """``question`` is what retrieval and generation use; ``method`` says how it was obtained.

    method: ``none`` (first question), ``standalone`` (needs no context), ``llm`` or ``heuristic``
    (the LLM's rewrite was unusable: ``raw`` shows what it wrote).
    """

    original: str
    question: str
    method: str
    raw: str = ""

    @property
    def changed(self) -> bool:
        return self.question != self.original


def key_terms(text: str, limit: int = 4) -> list[str]:
    """Content words of a question (jieba words of 2+ characters or Latin terms), question words removed.

    >>> key_terms("LoRA 为什么能减少显存占用？")
    ['LoRA', '减少', '显存', '占用']
    """
    import jieba

    jieba.setLogLevel(60)
    terms: list[str] = []
    for word in jieba.lcut(re.sub(r"\[\d+\]", "", text)):
        word = word.strip()
        if not word or word in _STOPWORDS or not any(ch.isalnum() for ch in word):
            continue
        if len(word) >= 2 or word.isascii():
            if word not in terms:
                terms.append(word)
    return terms[:limit]


def needs_context(question: str) -> bool:
    """Whether a question probably refers back to the conversation (pronoun, leading conjunction, or very short
    without a subject of its own: "为什么？" does, "RWKV 是什么？" names its subject and does not)."""
    q = question.strip()
    core = re.sub(r"[\s？?。！!，,]", "", q)
    return (len(core) < 8 and not latin_terms(q)) or q.startswith(_LEADING) or any(w in q for w in _ANAPHORA)


def rewrite_messages(history: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    """The rewrite prompt: the last turns of ``history`` ((role, text) pairs; role user/assistant) and the follow-up."""
    lines = []
    for role, text in list(history)[-2 * MAX_HISTORY_TURNS:]:
        text = re.sub(r"\s+", " ", re.sub(r"\[\d+\]", "", text)).strip()
        if role == "assistant":
            text = text[:MAX_ANSWER_CHARS] + ("…" if len(text) > MAX_ANSWER_CHARS else "")
        lines.append(("用户：" if role == "user" else "助手：") + text)
    user = "对话历史：\n" + "\n".join(lines) + f"\n\n追问：{question}\n改写后的问题："
    return [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": user}]


def clean_rewrite(raw: str) -> str:
    """The first non-empty line of the model's reply, without labels and quotes."""
    for line in (raw or "").splitlines():
        line = re.sub(r"^\s*(改写后的问题|改写后|改写|独立问题|问题)\s*[:：]\s*", "", line.strip())
        line = line.strip(" \t\"'“”‘’「」『』`*")
        if line:
            return line
    return ""


def usable(candidate: str, question: str, previous: str) -> bool:
    """A rewrite is used only if it is a question-sized line that names what the previous question was about."""
    if not 4 <= len(candidate) <= max(150, 3 * len(question)):
        return False
    if REFUSAL in candidate or "[1]" in candidate:
        return False
    if any(t.lower() not in candidate.lower() for t in latin_terms(question)):
        return False  # the follow-up's own subject ("那 QLoRA 呢？") was dropped or replaced
    terms = key_terms(previous, limit=6)
    if terms and not any(t.lower() in candidate.lower() for t in terms):
        return False  # still leans on the history ("它" unresolved) or drifted to another subject
    return True


def heuristic_rewrite(previous: str, question: str) -> str:
    """The fallback: the previous question's key terms in front of the follow-up."""
    terms = key_terms(previous)
    return f"关于{'、'.join(terms)}：{question}" if terms else f"{previous} {question}"


def rewrite_question(history: Sequence[tuple[str, str]], question: str, chat_fn: ChatFn | None) -> Rewrite:
    """A standalone version of ``question`` given the chat ``history`` ((role, text) pairs, oldest first).

    No history → unchanged. A question that needs no context → unchanged. Otherwise the LLM
    (``chat_fn(messages) -> str``) rewrites it; if that fails or is unusable, the previous
    question's key terms are put in front of it.
    """
    question = question.strip()
    previous = next((text for role, text in reversed(history) if role == "user"), "")
    if not history or not previous:
        return Rewrite(question, question, "none")
    if not needs_context(question):
        return Rewrite(question, question, "standalone")
    raw = ""
    if chat_fn is not None:
        try:
            raw = chat_fn(rewrite_messages(history, question))
        except Exception as e:  # the fallback below still gives retrieval something to work with
            raw = f"(改写失败：{type(e).__name__}: {e})"
        candidate = clean_rewrite(raw)
        if usable(candidate, question, previous):
            return Rewrite(question, candidate, "llm", raw)
    return Rewrite(question, heuristic_rewrite(previous, question), "heuristic", raw)


REWRITE_TOKENS = 64  # a rewritten question is one short line


class Conversation:
    """The turns of one chat, so that a follow-up can be rewritten into a standalone question.

    ``rewrite = conversation.standalone(question)``, answer ``rewrite.question``, then
    ``conversation.add(rewrite, answer)``. ``ragbot chat`` and the web app's chat both work this way; the
    rewrite uses ``chat_model`` (the answering LLM), or only the key-term fallback when it is None.
    """

    def __init__(self, chat_model=None, history: Sequence[tuple[str, str]] = ()) -> None:
        self.chat_model = chat_model
        self.history: list[tuple[str, str]] = list(history)

    def standalone(self, question: str) -> Rewrite:
        chat_fn = None
        if self.chat_model is not None:
            def chat_fn(messages: list[dict[str, str]]) -> str:
                return self.chat_model.generate(messages, max_new_tokens=REWRITE_TOKENS, temperature=0.0)
        return rewrite_question(self.history, question, chat_fn)

    def add(self, rewrite: Rewrite, answer) -> None:
        """Remember a turn: the question in its standalone form, and the answer's text."""
        self.history += [("user", rewrite.question), ("assistant", answer.text)]

    def reset(self) -> None:
        self.history.clear()
