"""The bad-input sweep (issue 17): every case of ``tests/bad_inputs.py``, one assertion each, and a
guard that no public verb is left without a case.

A new public verb (``wb.sae.train``, ``wb.concepts.fit``, ``wb.explain_dataset``, a CLI command...)
makes ``test_every_public_verb_has_a_bad_input_case`` fail until ``tests/bad_inputs.py`` holds at
least one case for it (its docstring says how to add one): call ``workbench._checks`` at the
verb's boundary and add the case.
"""
from __future__ import annotations

import pytest
import torch

import bad_inputs
from bad_inputs import CASES, Ctx, classify


@pytest.fixture(scope="module")
def ctx():
    c = Ctx()
    yield c
    c.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ctx):
    torch.manual_seed(0)
    outcome, detail = classify(case, ctx)
    wanted = "fine" if case.expect == "ok" else "clear"
    assert outcome == wanted, f"{case.id}: {outcome} ({detail})"


def test_every_public_verb_has_a_bad_input_case():
    missing = bad_inputs.verbs_without_cases()
    assert not missing, (
        f"public verb(s) {missing} have no bad-input case in tests/bad_inputs.py; call workbench._checks at "
        "the verb's boundary and add a Case (see the docstring of tests/bad_inputs.py), or list the function "
        "in EXEMPT with the reason it takes no user data.")


def test_verb_enumeration_sees_every_namespace_and_command():
    verbs = bad_inputs.public_verbs()
    for v in ("fit", "attribute", "attention_maps", "communities", "data.load", "models.save",
              "evaluation.pointing_game", "viz.community_overlay", "cli.train"):
        assert v in verbs
    assert "train.fit" not in verbs  # one name per function
    stale = sorted({c.verb for c in CASES} - set(verbs) - {"data.transforms"})
    assert not stale, f"cases name verbs that do not exist: {stale}"
