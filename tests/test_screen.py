"""The collapse-risk screen on tiny models: its shortcuts (shared heads, cached template prefixes,
stopping at the edited layer) give ROME's own keys, it ranks the riskiest first, and the screen
command writes the ranking."""

import json

import pytest
import torch

from editguard import load_model
from editguard.cases import write_cases
from editguard.cli import main
from editguard.editors.keys import context_templates
from editguard.editors.rome import RomeHparams, subject_keys
from editguard.screen import risk_score, screen_cases, template_subset
from tests.tiny_edits import SCREEN_CASES


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gptj", "tiny-llama"])
def test_screen_equals_rome_keys(name):
    mue = load_model(name)
    hp = RomeHparams.for_family(mue.family.name)
    templates = context_templates(mue, hp.context_template_length_params, hp.template_seed)
    rows = {r.case_id: r
            for r in screen_cases(mue, SCREEN_CASES, mue.edit_layer, templates, batch_size=2, progress=False)}
    for case in SCREEN_CASES:
        keys = subject_keys(mue, mue.edit_layer, case, templates)
        expected = float(keys.k_bar @ keys.k_unprefixed / (keys.k_bar @ keys.k_bar))
        row = rows[case.case_id]
        assert row.denominator_ratio == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert row.key_cosine == pytest.approx(
            float(torch.nn.functional.cosine_similarity(keys.k_bar, keys.k_unprefixed, dim=0)), abs=1e-5)
        assert row.subject_first == case.subject_first
    assert rows["1"].denominator_ratio == rows["2"].denominator_ratio  # one head, one computation


def test_screen_with_inverse_second_moment_uses_it_on_k_bar():
    mue = load_model("tiny-llama")
    templates = template_subset(context_templates(mue, ((5, 5),), 0), None)
    width = mue.rewrite_matrix(mue.edit_layer).shape[1]
    inverse = torch.diag(torch.linspace(0.5, 2.0, width))
    row = screen_cases(mue, SCREEN_CASES[:1], mue.edit_layer, templates, inverse, progress=False)[0]
    keys = subject_keys(mue, mue.edit_layer, SCREEN_CASES[0], templates)
    left = inverse @ keys.k_bar
    assert row.denominator_ratio == pytest.approx(float(left @ keys.k_unprefixed / (left @ keys.k_bar)), rel=1e-4)


def test_screen_ranks_riskiest_first():
    mue = load_model("tiny-llama")
    templates = context_templates(mue, ((5, 5),), 0)
    rows = screen_cases(mue, SCREEN_CASES, mue.edit_layer, templates, progress=False)
    risks = [r.risk for r in rows]
    assert risks == sorted(risks, reverse=True)
    assert risk_score(0.01) > risk_score(0.5) > risk_score(1.0)
    assert risk_score(-0.01) == risk_score(0.01)


def test_template_subset_keeps_the_unprefixed_template_and_spreads_the_rest():
    templates = ["{}"] + [f"t{i}. {{}}" for i in range(20)]
    subset = template_subset(templates, 11)
    assert subset[0] == "{}" and len(subset) == 11 and len(set(subset)) == 11
    assert subset[1:] == templates[1::2]
    assert template_subset(templates, None) == templates
    with pytest.raises(ValueError, match="at least 2 templates"):
        template_subset(templates, 1)


def test_screen_command_writes_ranked_json_and_csv(tmp_path, capsys):
    cases_file = write_cases(tmp_path / "cases.json", SCREEN_CASES)
    out = tmp_path / "screen.json"
    assert main(["screen", "--model", "tiny-llama", "--cases", str(cases_file), "--json", str(out),
                 "--templates", "3"]) == 0
    doc = json.loads(out.read_text())
    assert doc["templates"] == 3 and doc["n_cases"] == len(SCREEN_CASES) and len(doc["rows"]) == len(SCREEN_CASES)
    csv_lines = out.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,case_id") and len(csv_lines) == len(SCREEN_CASES) + 1
    assert "riskiest" in capsys.readouterr().out
