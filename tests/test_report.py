"""The HTML report, opened in a real headless Chromium (Playwright), and a real `mlflow ui`
showing a study's runs. Skipped only where no Chromium binary exists."""

import contextlib
from html import escape
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_evaluate import write_fake_study  # the fake study on disk, as the train stage writes it

from ablations import plots, polyfit, verdicts
from ablations.errors import DataError
from ablations.evaluate import read_study, study_histories, study_results
from ablations.io import write_json
from ablations.layout import FIGURES
from ablations.report import build_report
from conftest import copy_store

CHROMIUM = next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"),
                                   shutil.which("google-chrome"), "/usr/bin/chromium")
                 if path and Path(path).exists()), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary found "
                                    "(apt-get install chromium); the browser tests need one")
PNG = b"\x89PNG\r\n\x1a\n"


def write_polyfit(root, params):
    """results/polyfit.json and plots/polyfit/cv_error.png from the real polyfit functions."""
    cfg = params.polyfit.model_copy(update={"draws": 3})
    scores, draws = polyfit.repeat_selection(cfg)
    chosen = polyfit.choose_degree(scores)
    verdict = polyfit.study_answer(scores, draws, cfg)
    write_json(root / "results" / "polyfit.json",
               polyfit.metrics_dict(scores, chosen, cfg.true_degree, verdict, draws))
    plots.close({"cv": polyfit.plot_cv(scores, chosen, cfg.true_degree,
                                       root / "plots" / "polyfit" / "cv_error.png", draws)})


def write_study_outputs(root, params, models_dir, data_dir):
    """results/unit.json and plots/unit/*.png as the evaluate stage writes them
    (without their MLflow runs: one store per module is enough)."""
    units = read_study(params, "unit", models_dir, data_dir)
    metrics = study_results(params, "unit", units, data_dir)
    figures = plots.study_figures(params, "unit", metrics, study_histories(units), models_dir,
                                  data_dir)
    plots.save_figures(figures, root / "plots" / "unit")
    plots.close(figures)
    write_json(root / "results" / "unit.json", metrics)
    return metrics


@pytest.fixture(scope="module")
def report(tmp_path_factory, migrated_store):
    """(root, metrics, reports/index.html, tracking URI) of one report build."""
    root = tmp_path_factory.mktemp("report")
    params, models_dir, data_dir = write_fake_study(root)
    metrics = write_study_outputs(root, params, models_dir, data_dir)
    write_polyfit(root, params)
    uri = copy_store(migrated_store, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        html = build_report(params, root / "results", root / "plots",
                            root / "reports" / "index.html",
                            polyfit=(root / "results" / "polyfit.json",
                                     root / "plots" / "polyfit" / "cv_error.png"))
    return root, metrics, html, uri


@contextlib.contextmanager
def chromium_page():
    """A headless Chromium page and the list of problems it reports (console errors, page
    errors, failed requests). The system Chromium: Playwright's download needs the internet."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems = []
            page.on("console", lambda m: problems.append(f"console: {m.text}")
                    if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
            yield page, problems
        finally:
            browser.close()


def test_report_is_one_self_contained_escaped_file(report):
    root, metrics, html_path, _ = report
    html = html_path.read_text()
    pngs = list((root / "plots").rglob("*.png"))
    assert html.count('src="data:image/png;base64,') == len(pngs) == len(FIGURES) + 1
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "Does BatchNorm help &lt;small&gt; CNNs &amp; why?" in html  # escaped question
    assert html.count("<section") == 2  # the study and polyfit
    for comparison in metrics["comparisons"].values():  # an answer's: once, as a table row
        assert "decision" in comparison and escape(comparison["text"]) not in html
    # The decisions first, a row each; what they rest on once; the detail folded.
    decisions = html.index("<h3>Decisions: 0 of 3 answers decided</h3>")
    # The page opens with the count over every study: here the one study's own.
    count = metrics["decided"]
    overview = (f"<strong>{count['decided']} of {count['answers']} answers decided</strong> "
                f"(better, worse or equivalent): <a href=\"#unit\">unit</a> "
                f"{count['decided']} of {count['answers']}.")
    assert html.index(overview) < html.index("<nav>")
    for d in metrics["decisions"]:
        row = html.index(f"<tr class=\"decision {d['decision']}\"><td>{escape(d['answer'])}</td>"
                         f"<td>{escape(verdicts.decision_words(d))}</td>"
                         f"<td>{escape(verdicts.interval_text(d))}</td><td>{d['seeds']}</td>")
        assert decisions < row < html.index("<details>")
    assert html.count(escape(metrics["summary"])) == 1
    assert escape(metrics["verdict"]) not in html  # its sentences are the table's rows
    assert all(escape(detail) in html for detail in metrics["details"])
    assert html.index("<details>") < html.index(escape(metrics["details"][0])) < html.index("</details>")
    assert "Effects on test accuracy (paired by seed; each 95% interval on its own" in html
    assert "<td>relu-bn − relu</td>" in html  # a question pair of this non-factorial study
    polyfit_results = json.loads((root / "results" / "polyfit.json").read_text())
    assert escape(polyfit_results["verdict"]) in html
    assert "chosen by minimum (of 3 draws)" in html
    assert not list(html_path.parent.glob(".index.html*"))  # no temp file left (atomic write)


@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    _, metrics, html_path, _ = report
    with chromium_page() as (page, problems):
        page.goto(html_path.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => "
                               "({alt: i.alt, complete: i.complete, width: i.naturalWidth}))")
        text = page.inner_text("body")
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
    assert len(images) == len(FIGURES) + 1
    assert [i for i in images if not (i["complete"] and i["width"] > 0)] == []
    assert problems == []
    assert "Does BatchNorm help <small> CNNs & why?" in text  # shown as text, not as markup
    first = metrics["decisions"][0]  # relu-bn − relu, a row of the headline table
    assert f"relu-bn − relu\tundecided\t{verdicts.interval_text(first)}\t3\tabout" in text
    assert metrics["summary"] in text
    assert metrics["comparisons"]["tanh"]["text"] not in text  # in the folded detail
    data = screenshot.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_report_logged_to_mlflow(report):
    _, _, _, uri = report
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("report")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["index.html"]


def test_missing_metrics_names_file_and_stage(report, tmp_path):
    root, _, _, _ = report
    from ablations.config import load_params

    params = load_params(root / "params.yaml")
    out = tmp_path / "reports" / "index.html"
    with pytest.raises(DataError, match=r"empty/unit.json: missing; .*dvc repro evaluate@unit"):
        build_report(params, tmp_path / "empty", root / "plots", out)
    assert not out.exists()


# --------------------------------------------------------------------------- mlflow ui


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return
        time.sleep(0.3)
    pytest.fail(f"mlflow ui did not answer within {seconds} s:\n{log.read_text()[-2000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (uvicorn runs in a child), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_factorial_study_gets_an_interaction_table_and_forest_plot(tmp_path):
    """A 2 x 2 study's effects: main and simple effects, the interaction table, and a forest
    plot with one point per effect and a line at 0."""
    from ablations.effects import factorial_effects
    from ablations.report import _effects_tables
    from ablations.verdicts import effect_rows

    levels = {"relu": {"act": "relu", "norm": "none"}, "relu-bn": {"act": "relu", "norm": "bn"},
              "tanh": {"act": "tanh", "norm": "none"}, "tanh-bn": {"act": "tanh", "norm": "bn"}}
    values = {name: {f"seed{s}": 0.8 + 0.05 * (cell["norm"] == "bn") + 0.01 * s
                     + 0.03 * (cell == {"act": "tanh", "norm": "bn"}) for s in range(3)}
              for name, cell in levels.items()}
    found = {**factorial_effects(values, levels, {"act": "relu", "norm": "none"}), "pairs": []}
    rows = effect_rows(found)
    html = _effects_tables({"effect_rows": rows})
    assert "Interactions (0: the two effects add up)" in html
    assert "<td>act tanh × norm bn</td><td>+3.0 ± 0.0</td><td>3</td>" in html
    assert "<td>norm bn − none | act=tanh</td><td>+8.0 ± 0.0</td>" in html
    figure = plots.effects_forest({"study": "unit", "effect_rows": rows})
    try:
        ax = figure.axes[0]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == len(found["main"]) + len(found["simple"]) + 1
        assert labels[-1] == "act tanh − relu" and labels[0] == "act tanh × norm bn"
        assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the zero line
    finally:
        plots.close({"forest": figure})

