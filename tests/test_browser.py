"""Real-browser test: JupyterLab + Debian's Chromium driven by Playwright (Python, sync API).

Opens notebooks/01_attention_communities.ipynb, runs all cells, waits for the explorer widget,
clicks "next image" and checks that the overlay image changed; saves screenshots to
outputs/browser/ (git-ignored) for a human to look at.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = "01_attention_communities.ipynb"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on localhost serving a temporary copy of notebooks/; yields (url, root)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's chromium (apt-get install chromium) to run this test.")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed: pip install playwright")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    root = tmp_path / "notebooks"
    root.mkdir()
    # this test checks the UI, not the training: the notebook's small test parameters, injected the
    # way `workbench notebook` injects them (papermill), into a copy that JupyterLab then runs
    from workbench import notebook

    name = NOTEBOOK.removesuffix(".ipynb")
    notebook.parameterize(name, {**notebook.test_parameters(name), "OUT": str(tmp_path / "out")}, root / NOTEBOOK)
    settings = tmp_path / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), "wbtest"
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1",
                             "--port", str(port), f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--ServerApp.open_browser=False"]
                            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []), env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(1)
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}", root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run_all(page, url: str) -> None:
    """Open a notebook in JupyterLab, accept the proposed kernel, wait until idle, run all cells."""
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=120_000)
    # a "Select Kernel" dialog may appear: accept the proposed kernel (python3 from this venv)
    try:
        page.locator(".jp-Dialog .jp-mod-accept").first.click(timeout=20_000)
    except Exception:  # no dialog: the kernel started by itself
        pass
    page.wait_for_function("() => (document.querySelector('#jp-main-statusbar') || document.body)"
                           ".innerText.includes('Idle')", timeout=120_000)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"], '
                 '.lm-Menu-item[data-command="notebook:run-all-cells"]').first.click()


def _assert_no_errors(page) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg, "
                          ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()


def _fail(page, shots: Path, name: str) -> None:
    """Save a full-page screenshot and raise with the cell outputs."""
    page.screenshot(path=str(shots / f"{name}_failure.png"), full_page=True)
    outs = page.locator(".jp-OutputArea-output")
    texts = [outs.nth(i).inner_text()[:500] for i in range(outs.count())]
    raise AssertionError(f"browser test failed; screenshot in {shots}; cell outputs: {texts}")


@contextlib.contextmanager
def _widget_notebook(lab, name: str, cells: list[str]):
    """Write ``cells`` as NAME.ipynb in the lab's folder, open it in Chromium and run all cells;
    yields ``(page, shots)``. A failure in the block saves a screenshot and raises with the outputs."""
    import nbformat
    from playwright.sync_api import sync_playwright

    url, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, root / f"{name}.ipynb")
    shots = ROOT / "outputs" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run_all(page, url.replace(NOTEBOOK, f"{name}.ipynb"))
            yield page, shots
        except Exception:
            _fail(page, shots, name)
        finally:
            browser.close()


def test_explorer_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = lab
    shots = ROOT / "outputs" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run_all(page, url)
            explorer = page.locator(".wb-explorer")
            explorer.wait_for(state="visible", timeout=540_000)
            img = page.locator(".wb-explorer img.wb-overlay, .wb-explorer .wb-overlay").first
            img.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("(el) => el.getAttribute('src') && el.naturalWidth > 0", arg=img.element_handle(),
                                   timeout=60_000)
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "explorer_before.png"), full_page=False)
            before = img.get_attribute("src")
            page.locator(".wb-explorer .wb-next").first.click()
            page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                                   arg=[img.element_handle(), before], timeout=60_000)
            after = img.get_attribute("src")
            assert after != before
            page.screenshot(path=str(shots / "explorer_after.png"), full_page=False)
            _assert_no_errors(page)
        except Exception:
            _fail(page, shots, "explorer")
        finally:
            browser.close()


LATENTS_CELLS = [
    "import torch, workbench as wb\n"
    "from workbench.widgets import latent_browser\n"
    "torch.manual_seed(0)\n"
    "data = wb.data.load('phantom', split='test', n=12, size=32, progress=False)\n"
    "model = wb.models.create('vit_tiny', num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=2,\n"
    "                         embed_dim=32, num_heads=2)\n"
    "sae, log = wb.sae.train(wb.sae.activations(model, data, layer=0), 'topk', expansion=4, k=4, epochs=2,\n"
    "                        batch_size=64, progress=False)",
    "latent_browser(sae, model, data, n_top=4)",
]


def test_latent_browser_in_jupyterlab(lab, tmp_path):
    """The SAE latent browser in a real JupyterLab: next image redraws the heatmap, picking one of
    the image's strongest latents redraws the top-image strip."""
    with _widget_notebook(lab, "latents", LATENTS_CELLS) as (page, shots):
        widget = page.locator(".wb-latents")
        widget.wait_for(state="visible", timeout=300_000)
        heat = page.locator(".wb-latents .wb-latent-heatmap").first
        top = page.locator(".wb-latents .wb-latent-top").first
        for img in (heat, top):
            page.wait_for_function("(el) => el.getAttribute('src') && el.naturalWidth > 0",
                                   arg=img.element_handle(), timeout=60_000)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "latents_before.png"), full_page=False)
        before = heat.get_attribute("src")
        page.locator(".wb-latents .wb-latent-next").first.click()
        page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                               arg=[heat.element_handle(), before], timeout=60_000)
        strip = top.get_attribute("src")
        options = page.locator(".wb-latents .wb-latent-strongest select option")
        assert options.count() >= 2, options.count()
        page.locator(".wb-latents .wb-latent-strongest select").select_option(index=options.count() - 1)
        page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                               arg=[top.element_handle(), strip], timeout=60_000)
        page.screenshot(path=str(shots / "latents_after.png"), full_page=False)
        _assert_no_errors(page)


CONCEPT_CELLS = [
    "import torch, workbench as wb\n"
    "from workbench.widgets import concept_explorer\n"
    "torch.manual_seed(0)\n"
    "data = wb.data.load('phantom', split='test', n=6, size=32, task='diagnosis', progress=False)\n"
    "cbm = wb.concepts.create('vit_tiny', concepts=data, num_classes=6, classes=data.classes, img_size=32,\n"
    "                         in_chans=1, patch_size=8, depth=1, embed_dim=32, num_heads=2)",
    "concept_explorer(cbm, data)",
]


def test_concept_explorer_in_jupyterlab(lab, tmp_path):
    """The concept explorer in a real JupyterLab: "present" on a concept intervenes (the class bars and
    the evidence map redraw), "reset" undoes it, "next" shows another image."""
    with _widget_notebook(lab, "concepts", CONCEPT_CELLS) as (page, shots):
        widget = page.locator(".wb-concepts")
        widget.wait_for(state="visible", timeout=300_000)
        img = page.locator(".wb-concepts .wb-concept-map").first
        bars = page.locator(".wb-concepts .wb-class-bars").first
        page.wait_for_function("(el) => el.getAttribute('src') && el.naturalWidth > 0", arg=img.element_handle(),
                               timeout=60_000)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "concepts_before.png"), full_page=False)
        classes0 = bars.inner_html()
        src0 = img.get_attribute("src")
        page.locator(".wb-concepts .wb-present-3").first.click()  # pneumothorax present
        page.wait_for_function("([el, old]) => el.innerHTML !== old", arg=[bars.element_handle(), classes0],
                               timeout=60_000)
        page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                               arg=[img.element_handle(), src0], timeout=60_000)
        assert "pneumothorax=1.00" in widget.inner_text()
        page.screenshot(path=str(shots / "concepts_intervened.png"), full_page=False)
        page.locator(".wb-concepts .wb-reset").first.click()
        page.wait_for_function("([el, old]) => el.innerHTML === old", arg=[bars.element_handle(), classes0],
                               timeout=60_000)
        page.locator(".wb-concepts .wb-next").first.click()
        page.wait_for_function("([el, old]) => el.innerHTML !== old", arg=[bars.element_handle(), classes0],
                               timeout=60_000)
        _assert_no_errors(page)


PRUNER_CELLS = [
    "import torch, workbench as wb\n"
    "from workbench.widgets import pruner\n"
    "torch.manual_seed(0)\n"
    "data = wb.data.load('phantom', split='test', n=16, size=32, progress=False)\n"
    "model = wb.models.create('resnet18', num_classes=2, img_size=32, in_chans=1)\n"
    "history = wb.fit(model, data, epochs=1, batch_size=16, progress=False)  # left in training mode, as in notebook 06",
    "pruner(model, data, data, ratio=0.5, criteria=('gradient_x_activation', 'weight_magnitude'))",
]


def _params_ratio(text: str) -> float:
    import re

    m = re.search(r"params\s+([0-9.]+)x", text)
    assert m, f"no params ratio in the pruner's metrics: {text!r}"
    return float(m.group(1))


def test_pruner_in_jupyterlab(lab, tmp_path):
    """The pruner in a real JupyterLab on a CNN straight from fit: typing a higher ratio into the
    slider's readout redraws the maps and shrinks the parameter ratio; picking another criterion in
    the dropdown redraws the maps."""
    with _widget_notebook(lab, "pruner", PRUNER_CELLS) as (page, shots):
        widget = page.locator(".wb-pruner")
        widget.wait_for(state="visible", timeout=300_000)
        img = page.locator(".wb-pruner .wb-prune-maps").first
        metrics = page.locator(".wb-pruner .wb-prune-metrics").first
        page.wait_for_function("(el) => el.getAttribute('src') && el.naturalWidth > 0", arg=img.element_handle(),
                               timeout=60_000)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "pruner_before.png"), full_page=False)
        text0, src0 = metrics.inner_text(), img.get_attribute("src")
        assert "AUC pruned" in text0, text0  # not the widget's error line
        readout = page.locator(".wb-pruner .wb-prune-ratio .widget-readout").first
        readout.fill("0.8")
        readout.press("Enter")
        page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                               arg=[img.element_handle(), src0], timeout=120_000)
        page.wait_for_function("([el, old]) => el.innerText !== old", arg=[metrics.element_handle(), text0],
                               timeout=60_000)
        text1, src1 = metrics.inner_text(), img.get_attribute("src")
        assert "AUC pruned" in text1 and _params_ratio(text1) < _params_ratio(text0), (text0, text1)
        page.screenshot(path=str(shots / "pruner_ratio.png"), full_page=False)
        page.locator(".wb-pruner .wb-prune-criterion select").first.select_option("weight_magnitude")
        page.wait_for_function("([el, old]) => el.getAttribute('src') !== old && el.naturalWidth > 0",
                               arg=[img.element_handle(), src1], timeout=120_000)
        assert "AUC pruned" in metrics.inner_text(), metrics.inner_text()
        page.screenshot(path=str(shots / "pruner_criterion.png"), full_page=False)
        _assert_no_errors(page)
