"""Notebooks: paired sources in sync, parameters checked, and every notebook runs with its small
test parameters through the same runner users call (``workbench notebook``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")
pytest.importorskip("jupytext")

from workbench import cli  # noqa: E402
from workbench import notebook as nb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = nb.names(ROOT / "notebooks")

TINY = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   workbench:
#     test_parameters:
#       N: 2
# ---

# %% [markdown]
# # A tiny notebook

# %% tags=["parameters"]
N = 3            # how many
RATE = 0.5
NAME = "phantom"
OUT = "../outputs/tiny"

# %%
from pathlib import Path
Path(OUT).mkdir(parents=True, exist_ok=True)
(Path(OUT) / "result.json").write_text(str({"n": N, "rate": RATE, "name": NAME}).replace("'", '"'))

# %%
if N < 0:
    raise ValueError("N must not be negative")
'''


@pytest.fixture
def tiny(tmp_path):
    """A notebooks folder holding one tiny, fast pair (no torch in its kernel)."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "00_tiny.py").write_text(TINY)
    nb.sync(folder)
    return folder


def test_every_pair_is_in_sync_and_well_formed():
    assert NAMES, "no notebooks found"
    assert nb.check(ROOT / "notebooks") == []
    for name in NAMES:
        assert (ROOT / "notebooks" / f"{name}.py").exists() and (ROOT / "notebooks" / f"{name}.ipynb").exists()
        assert nb.test_parameters(name, ROOT / "notebooks"), f"{name} declares no small test_parameters"
    assert not list((ROOT / "notebooks").glob("_build_*.py")), "builder scripts were replaced by the .py sources"


def test_cli_check_passes_and_lists(capsys):
    assert cli.main(["notebook", "--check"]) == 0
    assert "all in sync" in capsys.readouterr().out
    assert cli.main(["notebook", "--list", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert "00_quickstart" in out and "EPOCHS = 3  [int]" in out and "CHECKPOINT" in out


def test_a_parameter_papermill_cannot_read_is_refused(tiny):
    """papermill skips, with only a log warning, a parameters line holding a second '=' (here in its
    help comment): the parameter would silently stop being settable."""
    py = tiny / "00_tiny.py"
    py.write_text(py.read_text().replace("RATE = 0.5", "RATE = 0.5       # 0 = off"))
    nb.sync(tiny)
    with pytest.raises(ValueError, match=r"\['RATE'\] .* one '=' per line"):
        nb.parameters("00_tiny", tiny)
    assert any("RATE" in p for p in nb.check(tiny))


def test_out_of_sync_pair_is_reported_and_refused(tiny, capsys):
    py = tiny / "00_tiny.py"
    py.write_text(py.read_text().replace("N = 3 ", "N = 4 "))
    problems = nb.check(tiny)
    assert len(problems) == 1 and "out of sync" in problems[0] and "--sync" in problems[0]
    assert cli.main(["notebook", "--check", "--dir", str(tiny)]) == 1
    assert "out of sync" in capsys.readouterr().err
    with pytest.raises(ValueError, match="out of sync"):
        nb.run("tiny", out=tiny / "run", root=tiny)
    assert nb.sync(tiny) == [tiny / "00_tiny.ipynb"] and nb.check(tiny) == []
    assert nb.sync(tiny) == []  # a second sync of an unchanged script writes nothing
    (tiny / "00_tiny.ipynb").unlink()
    assert "has no paired 00_tiny.ipynb" in nb.check(tiny)[0]


def test_outputs_and_untagged_parameters_are_reported(tiny):
    ipynb = tiny / "00_tiny.ipynb"
    book = nbformat.read(ipynb, as_version=4)
    book.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    nbformat.write(book, ipynb)
    assert any("committed with outputs" in p for p in nb.check(tiny))
    py = tiny / "00_tiny.py"
    py.write_text(py.read_text().replace('# %% tags=["parameters"]', "# %%"))
    nb.sync(tiny)
    assert any("must be tagged 'parameters'" in p for p in nb.check(tiny))


def test_unknown_notebook_lists_the_valid_ones(capsys):
    with pytest.raises(ValueError) as e:
        nb.find("not_a_notebook", ROOT / "notebooks")
    assert all(name in str(e.value) for name in NAMES)
    assert nb.find("quickstart", ROOT / "notebooks").name == "00_quickstart.py"
    assert nb.find("0", ROOT / "notebooks") == nb.find("00_quickstart.ipynb", ROOT / "notebooks")
    assert cli.main(["notebook", "nope", "--out", "x"]) == 2
    assert "valid notebooks: 00_quickstart" in capsys.readouterr().err


def test_parameters_are_checked_by_name_and_type(tiny, capsys):
    spec = nb.parameters("tiny", tiny)
    assert {k: p.type for k, p in spec.items()} == {"N": "int", "RATE": "float", "NAME": "str", "OUT": "str"}
    assert spec["N"].help == "how many" and spec["N"].default == 3
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['EPOCH'\].*N = 3  \(how many\); RATE = 0.5"):
        nb.check_parameters("tiny", {"EPOCH": 1}, tiny)
    with pytest.raises(TypeError, match="parameter N of notebook 00_tiny must be int .*got 'three'"):
        nb.check_parameters("tiny", {"N": "three"}, tiny)
    with pytest.raises(TypeError, match="must be int"):
        nb.check_parameters("tiny", {"N": True}, tiny)
    assert nb.check_parameters("tiny", {"RATE": 1, "N": 5}, tiny) == {"RATE": 1, "N": 5}
    # the command line parses literals, and a str parameter keeps the text as written
    parsed = dict(nb.parse_param(t) for t in ("N=7", "NAME=123", "RATE=0.25"))
    assert nb.check_parameters("tiny", parsed, tiny) == {"N": 7, "NAME": "123", "RATE": 0.25}
    with pytest.raises(TypeError, match="must be int"):
        nb.check_parameters("tiny", dict([nb.parse_param("N=seven")]), tiny)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        nb.parse_param("N")
    assert cli.main(["notebook", "tiny", "--dir", str(tiny), "--out", str(tiny / "r"), "-p", "N=x"]) == 2
    assert "must be int" in capsys.readouterr().err


def test_test_parameters_must_be_parameters(tiny):
    py = tiny / "00_tiny.py"
    py.write_text(py.read_text().replace("#       N: 2", "#       EPOCHS: 2"))
    nb.sync(tiny)
    assert any("test_parameters in the header of 00_tiny.py" in p and "EPOCHS" in p for p in nb.check(tiny))


def test_quickstart_reuses_the_checkpoint_make_demo_writes():
    """The quickstart's default CHECKPOINT is where `make demo` saves its model (seen from notebooks/)."""
    out = re.search(r"^OUT \?= (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert nb.parameters("quickstart", ROOT / "notebooks")["CHECKPOINT"].default == f"../{out}/model"


def test_run_injects_parameters_and_writes_the_executed_copy(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["notebook", "tiny", "--dir", str(tiny), "--out", str(out), "-p", "N=5", "-p", "NAME=cxr"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parameters"] == {"N": 5, "NAME": "cxr", "OUT": str(out.resolve())}
    assert json.loads((out / "result.json").read_text()) == {"n": 5, "rate": 0.5, "name": "cxr"}
    executed = nbformat.read(out / "00_tiny.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "N = 5" in injected[0].source
    # a failing cell: a clear error naming the cell, and the executed copy keeps the traceback
    with pytest.raises(nb.NotebookError, match=r"failed in the cell starting `if N < 0:`: ValueError: N must not"):
        nb.run("tiny", {"N": -1}, out=out, root=tiny)
    copy = (out / "00_tiny.ipynb").read_text()
    assert "N must not be negative" in copy


def test_parameterize_writes_an_unexecuted_copy(tiny, tmp_path):
    path = nb.parameterize("tiny", {"N": 9}, tmp_path / "p.ipynb", root=tiny)
    book = nbformat.read(path, as_version=4)
    assert any(c.source.strip().endswith("N = 9") for c in book.cells)
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_with_small_parameters(name, tmp_path):
    result = nb.run(name, nb.test_parameters(name, ROOT / "notebooks"), out=tmp_path, root=ROOT / "notebooks",
                    threads=1)
    executed = nbformat.read(result.output, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert all(c.get("execution_count") for c in executed.cells if c.cell_type == "code" and c.source.strip())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_uses_a_saved_checkpoint_instead_of_training(tmp_path):
    import workbench as wb

    model = wb.models.create("vit_tiny", num_classes=2, img_size=64, in_chans=1, patch_size=8, depth=1,
                             embed_dim=32, num_heads=2)
    wb.models.save(model, tmp_path / "demo" / "model")
    params = {**nb.test_parameters("quickstart", ROOT / "notebooks"), "CHECKPOINT": str(tmp_path / "demo" / "model")}
    result = nb.run("quickstart", params, out=tmp_path / "run", root=ROOT / "notebooks", threads=1)
    assert (tmp_path / "run" / "attention_communities.png").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists(), "trained a model although a checkpoint fits"
    assert result.cell_seconds[2] < result.seconds


def test_load_if_present_only_loads_a_checkpoint_that_fits(tmp_path):
    import torch

    import workbench as wb

    assert wb.models.load_if_present(tmp_path / "absent") is None
    model = wb.models.create("vit_tiny", num_classes=2, img_size=32, in_chans=1, patch_size=8, depth=1,
                             embed_dim=32, num_heads=2)
    wb.models.save(model, tmp_path / "m")
    loaded = wb.models.load_if_present(tmp_path / "m", img_size=32, in_chans=1, num_classes=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.warns(UserWarning, match=r"does not fit this data: img_size=\(32, 32\) \(wanted \(64, 64\)\)"):
        assert wb.models.load_if_present(tmp_path / "m", img_size=64, in_chans=1) is None
