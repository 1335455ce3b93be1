"""Elo tab: blind A/B comparisons between variants, votes in SQLite, and the leaderboard they add up to.

A round answers one question with two variants, puts them on random sides (A left, B right)
and hides their names until the vote is stored. The leaderboard, ratings chart and win-rate
matrix come straight from :mod:`ragbot.arena`; an optional LLM judge fills in machine votes,
which are labelled as such and can be filtered out.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import streamlit as st

from ragbot.evaluation.arena import HUMAN, JUDGE_PREFIX, Vote, VoteStore, assign_sides, judge_pair
from ragbot.errors import RagbotError
from ragbot.settings import Settings
from ragbot.types import Answer, ScoredChunk

VOTE_LABELS = {"a": "A 更好", "b": "B 更好", "tie": "平局", "both_bad": "都不好"}
VOTER_FILTERS = {"全部投票": None, "仅人工": False, "仅机器评审": True}
JUDGE_TOKENS = 8
MAX_JUDGE_PASSAGES = 6

AnswerFn = Callable[[str, str], Answer]  # (variant name, question) -> Answer


@dataclass(frozen=True)
class Round:
    """One blind comparison; ``left``/``right`` are the hidden variant names behind A and B."""

    question: str
    left: str
    right: str
    answer_a: str
    answer_b: str
    passages: str = ""
    vote: str | None = None
    vote_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def revealed(self) -> bool:
        return self.vote is not None


def votes_path(settings: Settings) -> Path:
    return settings.home / "votes.db"


def judge_passages(answers: Sequence[Answer]) -> str:
    """The passages both answers were given (deduplicated), numbered, as the judge sees them."""
    from ragbot.prompt import format_passages

    seen: dict[str, ScoredChunk] = {}
    for answer in answers:
        for hit in answer.passages:
            seen.setdefault(hit.chunk.id, hit)
    return format_passages(list(seen.values())[:MAX_JUDGE_PASSAGES])


def new_round(question: str, variant_x: str, variant_y: str, answer_fn: AnswerFn, rng: Any) -> Round:
    """Answer ``question`` with both variants and seat them at random."""
    left, right = assign_sides(variant_x, variant_y, rng)
    a, b = answer_fn(left, question), answer_fn(right, question)
    return Round(question, left, right, a.text, b.text, judge_passages([a, b]),
                 meta={"refused_a": a.refused, "refused_b": b.refused,
                       "sources_a": [c.chunk.source for c in a.citations],
                       "sources_b": [c.chunk.source for c in b.citations]})


def cast_vote(store: VoteStore, rnd: Round, vote: str, voter: str = HUMAN) -> Round:
    """Store the vote (committed before returning) and return the round with the names revealed."""
    if rnd.revealed:
        raise ValueError("this round already has a vote; start a new round")
    vote_id = store.add(Vote(rnd.question, rnd.left, rnd.right, rnd.answer_a, rnd.answer_b, vote, voter,
                             meta={**rnd.meta, "source": "ui"}))
    return replace(rnd, vote=vote, vote_id=vote_id)


def judge_name(settings: Settings) -> str:
    return JUDGE_PREFIX + settings.llm.split(":", 1)[-1].split("/")[-1]


def judge_rounds(store: VoteStore, questions: Sequence[str], variant_x: str, variant_y: str, answer_fn: AnswerFn,
                 chat_fn: Callable[[list[dict[str, str]]], str], voter: str, rng: Any,
                 progress: Callable[..., Any] | None = None) -> list[Vote]:
    """Machine votes: each question answered by both variants, judged twice with positions swapped."""
    progress = progress or (lambda it, **kw: it)
    votes = []
    for question in progress(list(questions), desc="机器评审", unit="题"):
        rnd = new_round(question, variant_x, variant_y, answer_fn, rng)
        verdict = judge_pair(chat_fn, question, rnd.passages, rnd.answer_a, rnd.answer_b)
        done = cast_vote(store, replace(rnd, meta={**rnd.meta, "judge": voter}), verdict, voter)
        votes.append(Vote(done.question, done.left, done.right, done.answer_a, done.answer_b, verdict, voter,
                          id=done.vote_id))
    return votes


def votes_frame(votes: Sequence[Vote]) -> Any:
    import pandas as pd

    return pd.DataFrame([{"#": v.id, "时间": v.created_at.replace("T", " ")[:19], "投票者": "人工" if not v.machine
                          else "机器 " + v.voter[len(JUDGE_PREFIX):], "问题": v.question, "A": v.variant_a,
                          "B": v.variant_b, "结果": VOTE_LABELS[v.vote]} for v in reversed(votes)],
                        columns=["#", "时间", "投票者", "问题", "A", "B", "结果"])


def leaderboard_frame(votes: Sequence[Vote], k: float, initial: float, n_boot: int = 1000) -> Any:
    from ragbot.evaluation.arena import leaderboard

    board = leaderboard(votes, k=k, initial=initial, n_boot=n_boot)
    board.insert(0, "名次", range(1, len(board) + 1))
    return board.rename(columns={"variant": "方案", "elo": "在线 Elo", "bt": "Bradley–Terry", "ci_low": "95% 下限",
                                 "ci_high": "95% 上限", "games": "对局", "wins": "胜", "losses": "负", "ties": "平"})


def csv_bytes(store: VoteStore, machine: bool | None) -> bytes:
    buf = io.StringIO()
    store.export_csv(buf, machine)
    return buf.getvalue().encode("utf-8-sig")  # with a BOM, Excel shows the Chinese text correctly


# ---------------------------------------------------------------- the tab


def _eval_questions(corpus: Path | None) -> list[str]:
    from ragbot.evaluation.runner import load_qa

    path = corpus / "qa.jsonl" if corpus is not None else None
    if path is None or not path.is_file():
        return []
    try:
        return [item.question for item in load_qa(path)]
    except RagbotError:
        return []


def _draw_question(questions: list[str]) -> None:
    st.session_state["arena_question"] = random.choice(questions)


def render_round(rnd: Round, store: VoteStore) -> None:
    from ui.render import md_code, md_escape, md_escape_answer

    st.markdown(f"**问题：** {md_escape(rnd.question)}")
    left, right = st.columns(2)
    for col, side, text, name in ((left, "A", rnd.answer_a, rnd.left), (right, "B", rnd.answer_b, rnd.right)):
        with col, st.container(border=True):
            title = f"#### 回答 {side}" + (f" · {md_code(name)}" if rnd.revealed else "")
            st.markdown(title)
            st.markdown(md_escape_answer(text) or "（空回答）")
    if rnd.revealed:
        st.success(f"已记录你的投票：**{VOTE_LABELS[rnd.vote]}**。揭晓：A = **{md_escape(rnd.left)}**，"
                   f"B = **{md_escape(rnd.right)}**。", icon="🗳️")
        return
    st.caption("两个回答来自不同的方案，左右位置随机；投票后才会显示方案名称。")
    cols = st.columns(4)
    for col, (vote, label), icon in zip(cols, VOTE_LABELS.items(), ("👈", "👉", "🤝", "👎")):
        if col.button(label, key=f"arena_vote_{vote}", icon=icon, width="stretch",
                      type="primary" if vote in ("a", "b") else "secondary"):
            st.session_state["arena_round"] = cast_vote(store, rnd, vote)
            st.rerun()


def render_leaderboard(store: VoteStore) -> None:
    from ragbot.evaluation.arena import win_rate_matrix

    st.markdown("#### 🏆 排行榜")
    c1, c2, c3 = st.columns([1, 1, 2])
    k = c1.number_input("Elo K 值", min_value=1, max_value=200, value=32, step=1, key="arena_k",
                        help="每一票最多改变多少分（在线 Elo）")
    initial = c2.number_input("初始分", min_value=0, max_value=5000, value=1500, step=50, key="arena_initial")
    who = c3.radio("统计哪些投票", list(VOTER_FILTERS), horizontal=True, key="arena_voters")
    machine = VOTER_FILTERS[who]
    votes = store.list(machine)
    if not votes:
        st.info("还没有投票。在上面比较一组回答并投票，排行榜就会出现。", icon="🗳️")
        return
    humans, machines = store.count(False), store.count(True)
    st.caption(f"共 {len(votes)} 票（人工 {humans} 票，机器评审 {machines} 票）。排名按 Bradley–Terry 评分，"
               "区间为 1000 次自助法重抽样的 95% 置信区间；在线 Elo 按投票先后逐票更新。平局和“都不好”都按平局计。")
    board = leaderboard_frame(votes, k, initial)
    st.dataframe(board, hide_index=True, width="stretch", key="arena_board",
                 column_config={c: st.column_config.NumberColumn(format="%.0f")
                                for c in ("在线 Elo", "Bradley–Terry", "95% 下限", "95% 上限")})
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**评分与 95% 置信区间**")
        st.pyplot(ratings_chart(board.rename(columns={"方案": "variant", "Bradley–Terry": "bt", "95% 下限": "ci_low",
                                                      "95% 上限": "ci_high"})), width="stretch")
    with right:
        st.markdown("**胜率矩阵**（行方案胜列方案的比例）")
        matrix = win_rate_matrix(votes).rename_axis(index="胜方 ＼ 负方", columns=None)
        st.dataframe(matrix.map(lambda v: "—" if v != v else f"{v:.0%}"), width="stretch")  # v != v: NaN, never met
    st.download_button("导出投票 CSV", csv_bytes(store, machine), file_name="ragbot-votes.csv", mime="text/csv",
                       key="arena_export", icon="⬇️")
    with st.expander(f"投票记录（{len(votes)}）"):
        st.dataframe(votes_frame(votes), hide_index=True, width="stretch")


def render(settings: Settings, variants: dict[str, Any], answer_fn: AnswerFn, chat_fn_for_judge: Callable[[], Any],
           corpus: Path | None) -> None:
    from ui.progress import StreamlitProgress
    from ui.render import md_code, md_escape

    store = VoteStore(votes_path(settings))
    st.subheader("⚔️ Elo 竞技场")
    st.caption("盲评：同一个问题由两个方案回答，你只看到 A 和 B；投票后揭晓各是哪个方案。投票保存在 "
               f"{md_code(str(votes_path(settings)))}，重启应用也不会丢。")
    names = list(variants)
    questions = _eval_questions(corpus)
    with st.container(border=True):
        q1, q2 = st.columns([5, 1], vertical_alignment="bottom")
        question = q1.text_input("问题", key="arena_question", placeholder="输入一个问题，或从评测集中随机抽一题")
        q2.button("随机抽题", key="arena_draw", disabled=not questions, on_click=_draw_question, args=(questions,),
                  icon="🎲", width="stretch")
        v1, v2, v3 = st.columns([2, 2, 1], vertical_alignment="bottom")
        default_y = next((n for n in ("llm-only", "naive", "no-rerank") if n in names and n != names[0]), names[-1])
        x = v1.selectbox("方案甲", names, index=0, key="arena_x")
        y = v2.selectbox("方案乙", names, index=names.index(default_y), key="arena_y")
        go = v3.button("生成回答", type="primary", key="arena_go", disabled=not question.strip() or x == y,
                       width="stretch", icon="⚡")
        if x == y:
            st.caption("请选择两个不同的方案。")
        if go:
            with st.spinner("两个方案正在回答…（CPU 上每个回答约 5–10 秒）"):
                try:
                    st.session_state["arena_round"] = new_round(question.strip(), x, y, answer_fn,
                                                                random.SystemRandom())
                except RagbotError as e:
                    st.error(md_escape(str(e)))
        rnd: Round | None = st.session_state.get("arena_round")
        if rnd is not None:
            render_round(rnd, store)

    with st.expander("🤖 自动评审（机器投票）"):
        st.caption("用本地 LLM 依据检索到的资料比较两个回答；每题问两次并交换位置，两次不一致记为平局。"
                   "机器投票单独标注，可在排行榜中筛掉。")
        j1, j2, j3 = st.columns([2, 2, 1], vertical_alignment="bottom")
        jx = j1.selectbox("方案甲", names, index=0, key="judge_x")
        jy = j2.selectbox("方案乙", names, index=names.index(default_y), key="judge_y")
        n = j3.number_input("题数", min_value=1, max_value=max(1, len(questions)), value=min(3, max(1, len(questions))),
                            key="judge_n")
        if st.button("开始机器评审", key="judge_go", disabled=not questions or jx == jy):
            with st.status("机器评审进行中…", expanded=True) as status:
                try:
                    votes = judge_rounds(store, questions[:int(n)], jx, jy, answer_fn, chat_fn_for_judge(),
                                         judge_name(settings), random.SystemRandom(), StreamlitProgress(st.container()))
                    status.update(label=f"机器评审完成：{len(votes)} 票", state="complete", expanded=False)
                except RagbotError as e:
                    status.update(label="机器评审失败", state="error")
                    st.error(md_escape(str(e)))

    render_leaderboard(store)


def ratings_chart(leaderboard_df: Any) -> Any:
    """Each variant's Bradley-Terry rating as a point with its interval as an error bar, best at the top.

    Built on a bare ``matplotlib.figure.Figure`` with the Agg canvas, not pyplot: pyplot keeps
    global figure state that leaks across Streamlit reruns and sessions. Show it with
    ``st.pyplot(fig)`` or save it with ``fig.savefig``.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = {"variant", "bt", "ci_low", "ci_high"} - set(leaderboard_df.columns)
    if missing:
        raise ValueError(f"leaderboard_df lacks column(s) {', '.join(sorted(missing))}; pass leaderboard(votes)")
    df = leaderboard_df.sort_values("bt", ascending=True, kind="stable")  # barh-style: last row drawn at the top
    fig = Figure(figsize=(6.0, 0.5 * len(df) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if df.empty:
        ax.text(0.5, 0.5, "no votes yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(df))
    bt = df["bt"].to_numpy(float)
    # An interval always contains its estimate, but clip so a NaN or odd interval never draws a negative bar.
    err = np.vstack([np.clip(bt - df["ci_low"].to_numpy(float), 0, None),
                     np.clip(df["ci_high"].to_numpy(float) - bt, 0, None)])
    ax.errorbar(bt, y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
    ax.set_yticks(y, df["variant"].astype(str).tolist())
    ax.set_xlabel("Bradley-Terry rating (Elo scale) with bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.5 / max(len(df), 1))
    return fig
