"""report stage: one static, offline HTML page that answers every study's question.

A section per study (question; the decisions, one row per question-level answer; what they
rest on; the detail folded in a <details>: effects within each setting, interactions,
convergence, comparisons with the baseline; mean ± 95% CI per variant, BN speed-up, figures),
from the evaluate stage's results/<study>.json and plots/<study>/, and polyfit's when its results file exists (both of polyfit's paths
come from the command line, as dvc.yaml gives them to the polyfit stage). Figures are
embedded as base64 `data:` URIs and the styles are inline: the single file can be mailed,
archived or opened from a DVC cache without a server or network, and needs no JavaScript.
Also logged as an artifact of the run "report" in the MLflow experiment "report".
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from ablations import tracking, verdicts
from ablations.config import Params
from ablations.errors import DataError
from ablations.io import atomic_file, read_json
from ablations.layout import FIGURES
from ablations.stats import format_result as pm

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 3rem; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.baseline { background: #fff3e0; } .question { font-style: italic; }
.verdict { background: #eef6ee; border-left: 4px solid #3a3; padding: 0.6rem 1rem; }
tr.decision.undecided td:nth-child(2) { color: #955; } .note, .methods { font-size: 0.85rem; }
table.decisions td:nth-child(2), table.decisions td:nth-child(5) { text-align: left; }
details { margin: 1rem 0; } summary { cursor: pointer; font-weight: 600; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
nav a { margin-right: 1rem; }
"""


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None,
           table_class: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr class=\"{escape(cls)}\">" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
        for row, cls in zip(rows, classes or [""] * len(rows)))
    attribute = f" class=\"{escape(table_class)}\"" if table_class else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{escape(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _figures(folder: Path) -> str:
    """Known figures in a fixed order, then any other PNG the stage wrote."""
    known = [folder / name for name in FIGURES if (folder / name).exists()]
    others = sorted(p for p in folder.glob("*.png") if p.name not in FIGURES)
    return "".join(_figure(p, p.stem.replace("_", " ")) for p in known + others)


def _variants_table(m: dict) -> str:
    header = ["variant", "seeds", "diverged", "test accuracy %", "test loss",
              f"epochs to {m['target_val_accuracy']:g} val acc.", "reached",
              "seconds to target", "fit seconds", "epochs run"]
    rows, classes = [], []
    for name, v in m["variants"].items():
        label = f"{name} (baseline)" if name == m["baseline"] else name
        if v["data"] != m["data"]:  # a transfer source: tested on other data, not compared
            label += f" (on {v['data']})"
        rows.append([label, str(v["seeds"]), str(v["diverged"]), pm(v["test_accuracy"], 100),
                     pm(v["test_loss"], digits=3), pm(v["epochs_to_target"]),
                     f"{v['epochs_to_target']['reached']} of {v['epochs_to_target']['of']}",
                     pm(v["seconds_to_target"]), pm(v["fit_seconds"]), pm(v["epochs_run"])])
        classes.append("baseline" if name == m["baseline"] else "")
    return _table(header, rows, classes)


def _speedup_table(m: dict) -> str:
    if not m["bn_speedup"]:
        return ""
    none = {"mean": None}
    rows = [[f"{name} vs {s['twin']}", pm(s.get("steps_ratio", none), digits=2),
             pm(s.get("train_seconds_ratio", none), digits=2), pm(s["epochs_ratio"], digits=2),
             pm(s["seconds_ratio"], digits=2), str(s.get("steps_ratio", s["epochs_ratio"])["n"]),
             str(s["bn_only_reached"])] for name, s in m["bn_speedup"].items()]
    return ("<h3>BatchNorm speed-up (without BN ÷ with BN, mean of per-seed ratios ± 95% CI)</h3>"
            + _table(["pair", "training steps", "seconds inside steps", "whole epochs",
                      "wall seconds", "seeds (both reached)", "only BN reached"], rows))


def _difference(row: dict) -> str:
    if row["difference"] is None:
        return "—"
    return f"{row['difference']:+.1f}" + (f" ± {row['ci']:.1f}" if row["ci"] is not None else "")


def _effects_tables(m: dict) -> str:
    """The effects (main, within each setting, question pairs) and, where factorial, the
    interactions: difference ± 95% interval in points, seeds paired, whether 0 is excluded."""
    rows = m.get("effect_rows", [])
    header = ["effect", "difference (points)", "seeds", "interval excludes 0"]

    def table(kinds):
        chosen = [r for r in rows if r["kind"] in kinds]
        return _table(header, [[r["label"], _difference(r), str(r["n"]),
                                "yes" if r["shown"] else "no"] for r in chosen]) if chosen else ""

    effects, interactions = table(("main", "simple", "pairs")), table(("interaction",))
    return ((f"<h3>Effects on test accuracy (paired by seed; each 95% interval on its own, not "
             f"adjusted for the study's other answers)</h3>{effects}" if effects else "")
            + (f"<h3>Interactions (0: the two effects add up)</h3>{interactions}"
               if interactions else ""))


def _decisions(m: dict) -> str:
    """The headline: one row per question-level answer (decision, difference ± interval,
    seeds, what would decide it), and how the intervals were made."""
    decided = m.get("decisions", [])
    if not decided:
        return ""
    rows = [[d["answer"], verdicts.decision_words(d), verdicts.interval_text(d), str(d["seeds"]),
             d["would_decide"]] for d in decided]
    classes = [f"decision {d['decision']}" for d in decided]
    methods = "".join(f"<li>{escape(method)}</li>" for method in
                      dict.fromkeys(d["method"] for d in decided))
    count = m["decided"]
    return (f"<h3>Decisions: {count['decided']} of {count['answers']} answers decided</h3>"
            + _table(["answer", "decision", "difference and interval", "seeds",
                      "what would decide it"], rows, classes, "decisions")
            + f"<p class=\"note\">better / worse: the interval excludes 0 (a speed-up ratio: "
            f"1); equivalent: it lies inside ±{m['margin']:.1f} points (the study's margin). "
            "Each interval is at the level Holm's procedure tested its answer at, so that the "
            f"chance of any wrong decision in the study stays below {1 - m['confidence']:.0%}."
            f"</p><ul class=\"methods\">{methods}</ul>")


def _details(m: dict) -> str:
    """Behind the decisions, folded: effects within each setting, interactions, convergence,
    the comparisons with the baseline that are not answers themselves (95% intervals, each on
    its own)."""
    details = "".join(f"<li>{escape(a)}</li>" for a in m.get("details", []))
    comparisons = "".join(f"<li>{escape(c['text'])}</li>" for c in m["comparisons"].values()
                          if "decision" not in c)
    return ("<details><summary>Detail: effects within each setting, interactions, convergence, "
            "comparisons with the baseline</summary>"
            + (f"<ul class=\"details\">{details}</ul>" if details else "")
            + _effects_tables(m)
            + (f"<h3>Compared with the baseline {escape(m['baseline'])}</h3><ul>{comparisons}</ul>"
               if comparisons else "")
            + "</details>")


def study_section(study: str, m: dict, plots_dir: Path) -> str:
    folder = plots_dir / study
    return (f"<section id=\"{escape(study)}\"><h2>{escape(study)}</h2>"
            f"<p class=\"question\">{escape(m['question'])}</p>"
            + _decisions(m)
            + f"<p class=\"verdict\">{escape(m['summary'])}</p>"
            + _details(m)
            + _variants_table(m)
            + f"<p>{m['budget']['seeds']} seeds per variant; ± is the half-width of the 95% "
            "Student-t interval of the mean.</p>"
            + _speedup_table(m)
            + (_figures(folder) if folder.is_dir() else "")
            + "</section>")


def _degree_rows(m: dict) -> tuple[list[str], list[list[str]]]:
    """Per degree: the first draw's CV MSE, and over all draws how often each rule chose it
    and the median (10th-90th percentile) CV MSE."""
    header = ["degree", "CV MSE mean (first draw)", "SE"]
    rows = [[degree, f"{d['mean']:.4g}", f"{d['se']:.3g}"] for degree, d in m["per_degree"].items()]
    draws = m.get("draws")
    if not draws or draws["count"] < 2:
        return header, rows
    header += [f"chosen by minimum (of {draws['count']} draws)", "chosen by 1-SE rule",
               "CV MSE median over draws (10th-90th pct)"]
    for row in rows:
        curve = draws["cv_mse"][row[0]]
        row += [str(draws["min_rule"]["frequency"][row[0]]),
                str(draws["one_se_rule"]["frequency"][row[0]]),
                f"{curve['median']:.4g} ({curve['q10']:.3g}-{curve['q90']:.3g})"]
    return header, rows


def polyfit_section(m: dict, figure: Path) -> str:
    header, rows = _degree_rows(m)
    return ("<section id=\"polyfit\"><h2>polyfit</h2>"
            "<p class=\"question\">Are complex models chosen over simpler ones under k-fold "
            "cross-validation?</p>"
            f"<p class=\"verdict\">{escape(m['verdict'])}</p>"
            f"<p>True degree {m['true_degree']}; chosen in the first draw: "
            f"{m['chosen_degree_min']} (minimum), {m['chosen_degree_1se']} "
            "(one-standard-error rule).</p>"
            + _table(header, rows)
            + (_figure(figure, "CV error vs degree") if figure.exists() else "")
            + "</section>")


def read_results(results_dir: Path, study: str) -> dict[str, Any]:
    path = Path(results_dir) / f"{study}.json"
    if not path.exists():
        raise DataError(f"{path}: missing; run the evaluate stage first "
                        f"(dvc repro evaluate@{study})")
    return read_json(path)


def render(params: Params, results_dir: Path, plots_dir: Path,
           polyfit: tuple[Path, Path] | None = None) -> str:
    """The page; `polyfit` = (its results file, its figure), the paths dvc.yaml gives both
    stages: its section appears when the results file exists."""
    results_dir, plots_dir = Path(results_dir), Path(plots_dir)
    studies = {study: read_results(results_dir, study) for study in params.studies}
    sections = [study_section(study, m, plots_dir) for study, m in studies.items()]
    names = list(studies)
    if polyfit is not None and Path(polyfit[0]).exists():
        sections.append(polyfit_section(read_json(polyfit[0]), Path(polyfit[1])))
        names.append("polyfit")
    nav = "".join(f"<a href=\"#{escape(n)}\">{escape(n)}</a>" for n in names)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Ablation studies — report</title>"
            f"<style>{STYLE}</style></head><body><h1>Ablation studies</h1>"
            f"{_overview(studies)}<p>Mean ± 95% confidence interval over seeds.</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</body></html>\n")


def _overview(studies: dict[str, dict[str, Any]]) -> str:
    """"21 of 28 answers decided: batchnorm 4 of 4, …" — the studies' own counts, summed."""
    counts = {study: m["decided"] for study, m in studies.items() if m.get("decided")}
    if not counts:
        return ""
    decided = sum(c["decided"] for c in counts.values())
    answers = sum(c["answers"] for c in counts.values())
    per_study = ", ".join(f"<a href=\"#{escape(s)}\">{escape(s)}</a> {c['decided']} of "
                          f"{c['answers']}" for s, c in counts.items())
    return (f"<p class=\"overview\"><strong>{decided} of {answers} answers decided</strong> "
            f"(better, worse or equivalent): {per_study}.</p>")


def build_report(params: Params, results_dir: Path, plots_dir: Path, out_html: Path,
                 polyfit: tuple[Path, Path] | None = None) -> Path:
    """Write the report atomically, log it to MLflow (experiment and run "report")."""
    html = render(params, results_dir, plots_dir, polyfit)
    out_html = Path(out_html)
    with atomic_file(out_html) as handle:
        handle.write(html)
    tags = tracking.run_tags("report", "report", kind="report", dvc_stage="report")
    with tracking.run("report", "report", tags,
                      parent_id=tracking.outer_run_id()) as run_id:
        tracking.log_artifact(run_id, out_html)
    return out_html
