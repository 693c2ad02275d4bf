"""The README matches the code: schema columns, registries, and the CI command."""

from __future__ import annotations

import re

from sweeper.attacks import ATTACKS
from sweeper.deploy.mcus import MCUS
from sweeper.models.quantizers import QUANTIZERS
from sweeper.store import COLUMNS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_result_column_is_documented():
    documented = re.findall(r"^\| `(\w+)` \| ", README.split("## Results", 1)[1].split("### Querying")[0],
                            flags=re.M)
    assert documented == [name for name, _, _ in COLUMNS]


def test_the_robust_outcome_columns_say_they_need_the_clean_input_right_too():
    # adv_correct and its kind count a sample robust only if it is right unperturbed as
    # well (run.evaluate.robust); their descriptions, here and in the README, must say so
    schema = README.split("## Results", 1)[1].split("### Querying")[0]
    described = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| (.*) \|$", schema, flags=re.M))
    for name, _, description in COLUMNS:
        if name in ("adv_acc", "adv_correct", "deployed_adv_acc", "deployed_adv_correct"):
            assert "both" in description and described[name] == description, name


def test_every_registered_part_is_documented():
    for registry in (QUANTIZERS, ATTACKS, MCUS):
        for name in registry:
            assert f"| `{name}` |" in README, f"{registry.kind} {name} missing from README"


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```\n(python -m pip install[^\n]*)\n```", README)
    assert len(blocks) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1] in ci.splitlines()
    assert blocks[0].endswith("sweeper launch grids/demo.yaml")


def test_every_query_view_and_diagnostic_flag_is_documented():
    from sweeper.analysis.checks import CHECKS
    from sweeper.analysis.views import VIEWS

    for name in [*VIEWS, "diagnostics", "launches", "mcus"]:
        assert f"| `{name}` |" in README, f"view {name} missing from README"
    for flag in CHECKS:
        assert f"| `{flag}` |" in README, f"diagnostic {flag} missing from README"


def test_the_masking_reading_does_not_credit_stq_with_randomness_its_evaluation_lacks():
    """stq's quantizers sample only in training (models.QModel), and its activations are
    plain ternary: a reading that explains its numbers by stochastic activations is wrong."""
    reading = (ROOT / "docs" / "masking" / "README.md").read_text()
    assert "stochastic activations" not in reading
    assert "deterministic network" in reading
    stq = QUANTIZERS.get("stq")
    assert stq.activation == "ternary(alpha=1)" and stq.kernel.startswith("stochastic_ternary")
