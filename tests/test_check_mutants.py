"""devtools/check_mutants.py can fail: its mutant really switches a check off (the test made for
that check then fails), and with no mutant the same test passes."""

from __future__ import annotations

from devtools.check_mutants import run_tests

TEST = "tests/agent/quality/test_finger_quality.py::test_the_score_is_a_check_of_its_own"


def test_a_mutant_check_fails_the_test_made_for_it() -> None:
    control = run_tests(None, [TEST])
    assert control["returncode"] == 0 and control["failed"] == [], control["summary"]
    mutant = run_tests("score", [TEST])
    assert mutant["returncode"] == 1, mutant["summary"]
    assert len(mutant["failed"]) == 4 and all(t.startswith(TEST) for t in mutant["failed"])
    # A name no check has changes nothing.
    assert run_tests("no_such_check", [TEST])["failed"] == []
