"""Results: one section per benchmark, each a Markdown table for people and structured
data for tools, written to ``bench/results/`` as JSON and Markdown."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def num(value: float | None, digits: int = 0) -> str:
    """A figure for a table cell: thousands separators, ``—`` when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def ratio(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}x"


@dataclass
class Section:
    """One benchmark's table, data and remarks."""

    key: str
    #: Short name for the summary of targets.
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (target, met) for every target this section checks.
    targets: list[tuple[str, bool | None]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Report:
    meta: dict[str, Any]
    sections: list[Section] = field(default_factory=list)

    def targets(self) -> list[tuple[str, str, bool | None]]:
        return [(s.name, t, met) for s in self.sections for t, met in s.targets]

    def markdown(self) -> str:
        m = self.meta
        head = [
            f"## Keyturn benchmarks, {m['started']}",
            "",
            f"Command: `{m['command']}`  ",
            f"Mode: {m['mode']}; load: {m['load']}; machine: {m['cpus']} cores, "
            f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end', '?')}; "
            f"Python {m['python']}, grpcio {m['grpcio']}, ghz {m['ghz']}.",
        ]
        body = [s.markdown() for s in self.sections]
        checks = self.targets()
        summary = ["### Targets", "", "| benchmark | target | verdict |", "|---|---|---|"]
        summary += [f"| {title} | {t} | {verdict(met)} |" for title, t, met in checks]
        if not checks:
            summary = ["### Targets", "", "(none in the suites run)"]
        return "\n\n".join(["\n".join(head), *body, "\n".join(summary)]) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "sections": {
                s.key: {"title": s.title, "data": s.data, "notes": s.notes} for s in self.sections
            },
            "targets": [
                {"benchmark": title, "target": t, "met": met} for title, t, met in self.targets()
            ],
        }


def write(report: Report, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``<stamp>.json`` and ``<stamp>.md``, plus copies named ``latest.*``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_text = json.dumps(report.as_json(), indent=2, default=str) + "\n"
    markdown = report.markdown()
    json_path, md_path = directory / f"{stamp}.json", directory / f"{stamp}.md"
    for path, text in (
        (json_path, json_text),
        (md_path, markdown),
        (directory / "latest.json", json_text),
        (directory / "latest.md", markdown),
    ):
        path.write_text(text)
    return json_path, md_path
