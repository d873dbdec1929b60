"""Concept explorer widget: driven by setting control values and checking what it draws."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import workbench as wb
from workbench import concepts as wc

from test_concepts import VIT

pytest.importorskip("ipywidgets")


def _digest(w) -> str:
    return hashlib.sha1(bytes(w.image.value)).hexdigest()


@pytest.fixture(scope="module")
def explorer_setup():
    torch.manual_seed(0)
    ds = wb.data.load("phantom", split="val", n=4, size=32, task="diagnosis", progress=False, cache=False)
    cbm = wc.create("vit_tiny", concepts=ds, num_classes=6, img_size=32, in_chans=1, classes=ds.classes, **VIT).eval()
    return cbm, ds


def test_concept_explorer_redraws_on_interventions(explorer_setup, tmp_path):
    from workbench.widgets import concept_explorer

    cbm, ds = explorer_setup
    w = concept_explorer(cbm, ds)
    assert w.last_error is None, w.last_error
    assert "wb-concepts" in w._dom_classes and "wb-concept-map" in w.image._dom_classes
    with torch.no_grad():
        p0 = torch.sigmoid(cbm.concept_logits(ds[0]["image"][None]))[0]
    assert w.controls["concept_nodule"].value == pytest.approx(float(p0[0]), abs=0.006)
    classes0, contrib0, img0 = w.classes_html.value, w.contrib_html.value, _digest(w)
    # moving a slider intervenes: the prediction equals wc.intervene's
    w.controls["concept_pneumothorax"].value = 1.0
    assert w.intervened == {3: 1.0} and w.last_error is None
    want = wc.intervene(cbm, ds[0]["image"][None], {"pneumothorax": 1.0})
    assert torch.allclose(w.prediction().probs, want.probs, atol=1e-6)
    assert w.classes_html.value != classes0 and w.contrib_html.value != contrib0 and _digest(w) != img0
    assert "pneumothorax=1.00" in w.status.value and "✎" in w.contrib_html.value
    # buttons, reset, true concepts, image change
    w.controls["absent_effusion"].click()
    assert w.intervened[1] == 0.0 and w.controls["concept_effusion"].value == 0.0
    w.controls["reset"].click()
    assert w.intervened == {} and w.controls["concept_pneumothorax"].value == pytest.approx(float(p0[3]), abs=0.006)
    w.controls["true"].click()
    assert [w.intervened[k] for k in range(5)] == ds[0]["concepts"].tolist()
    w.controls["next"].click()
    assert w.controls["index"].value == 1 and w.intervened == {} and len(w._cache) == 2
    # the shown class and the map follow their controls
    before = w.contrib_html.value
    w.controls["target"].value = 2
    assert w.contrib_html.value != before and "shown class heart_failure" in w.status.value
    for name, value in [("map", "cardiomegaly"), ("alpha", 0.9), ("show_heart", False)]:
        before = _digest(w)
        w.controls[name].value = value
        assert w.last_error is None, (name, w.last_error)
        assert _digest(w) != before, name
    # export: the figure and a sidecar of every parameter
    w.controls["present_nodule"].click()
    w.controls["format"].value = "svg"
    w.controls["path"].value = str(tmp_path / "view")
    w.controls["export"].click()
    assert [p.suffix for p in w.last_export] == [".svg", ".json"]
    side = json.loads(w.last_export[1].read_text())["params"]
    assert side["intervened"] == {"nodule": 1.0} and side["index"] == 1 and side["map"] == "cardiomegaly"


def test_concept_explorer_bad_input(explorer_setup):
    from workbench.widgets import concept_explorer

    cbm, ds = explorer_setup
    with pytest.raises(ValueError, match="indices is empty"):
        concept_explorer(cbm, ds, indices=[])
    with pytest.raises(TypeError, match="concept bottleneck model"):
        concept_explorer(wb.models.create("resnet18", 2, 32, 1), ds)
