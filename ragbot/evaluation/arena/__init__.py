"""The Elo arena: blind pairwise votes between system variants, where they are stored, and what they add up to.

``votes`` holds the :class:`Vote` record, the SQLite :class:`VoteStore` and the CSV export;
``ratings`` turns votes into online Elo, Bradley-Terry ratings with bootstrap intervals, and a
leaderboard; ``judge`` lets a local LLM vote too, asking twice with the answers swapped so that
its preference for a position cancels. The chart of the ratings lives with its only user, the
web app's Elo tab (``ui/arena.py``).
"""

from ragbot.evaluation.arena.judge import JUDGE_SYSTEM, ChatFn, judge_pair, judge_prompt, parse_verdict
from ragbot.evaluation.arena.ratings import (
    LEADERBOARD_COLUMNS,
    bootstrap_ci,
    bradley_terry,
    leaderboard,
    online_elo,
    win_rate_matrix,
)
from ragbot.evaluation.arena.votes import (
    CSV_COLUMNS,
    HUMAN,
    JUDGE_PREFIX,
    SCHEMA_VERSION,
    VOTES,
    Vote,
    VoteStore,
    assign_sides,
    csv_cell,
)

__all__ = [
    "CSV_COLUMNS", "HUMAN", "JUDGE_PREFIX", "JUDGE_SYSTEM", "LEADERBOARD_COLUMNS", "SCHEMA_VERSION", "VOTES",
    "ChatFn", "Vote", "VoteStore", "assign_sides", "bootstrap_ci", "bradley_terry", "csv_cell", "judge_pair",
    "judge_prompt", "leaderboard", "online_elo", "parse_verdict", "win_rate_matrix",
]
