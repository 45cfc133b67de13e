"""``moesim advise``: the cheapest configuration that meets the latency targets.

``advise(spec, out)`` screens every configuration of the spec's search with a steady-state
estimate from the layer model, simulates the ones that can still win (binary-searching each
one's capacity under the SLO) and writes ``candidates.parquet``, ``advice.md``, ``best.yaml``
(when a configuration meets the targets) and ``pareto.png`` into ``out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moesim.advise.outputs import atomic, candidate_rows, write_best, write_candidates
from moesim.advise.pareto import write_pareto
from moesim.advise.report import advice_markdown
from moesim.advise.search import Candidate, Search, run_search
from moesim.advise.spec import AdviseSpec, LoadedAdvice, load_advise_spec
from moesim.errors import MoesimError

__all__ = [
    "AdviseOutcome",
    "AdviseSpec",
    "Candidate",
    "LoadedAdvice",
    "Search",
    "advise",
    "load_advise_spec",
]


@dataclass(frozen=True)
class AdviseOutcome:
    """A search and the files it wrote."""

    search: Search
    written: list[Path]

    @property
    def best(self) -> Candidate | None:
        return self.search.ranking[0] if self.search.ranking else None


def advise(
    spec: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    fresh: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> AdviseOutcome:
    """Run the search of ``spec`` into ``out`` (resuming what is there unless ``fresh``)."""
    advice = load_advise_spec(spec)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MoesimError(f"--out {out}: exists and is not a folder")
    search = run_search(
        advice,
        out,
        workers=workers,
        ray_address=ray_address,
        fresh=fresh,
        on_progress=on_progress,
    )
    rows = candidate_rows(search)
    written = [out / "candidates.parquet", out / "advice.md", out / "pareto.png"]
    write_candidates(written[0], search)
    text = advice_markdown(search, rows) + "\n"
    atomic(written[1], lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    write_pareto(written[2], search)
    best = out / "best.yaml"
    if search.ranking:
        write_best(best, search)
        written.append(best)
    else:
        best.unlink(missing_ok=True)  # an older search's advice is not this one's
    return AdviseOutcome(search, written)
