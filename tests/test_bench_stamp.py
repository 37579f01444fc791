"""`make bench` names the code it measured: the commit, and whether the tree had changes
beyond it (bench/common.py ``git_state``, bench/report.py ``commit_line``). Checked on a
scratch repository made here, and on this checkout against git itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.common import REPO, git_state
from bench.report import commit_line


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def scratch_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    git(repo, "add", "a.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    return repo


def test_a_clean_tree_is_stamped_with_its_full_commit(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    state = git_state(repo)
    assert state["git_commit"] == git(repo, "rev-parse", "HEAD").strip() and len(state["git_commit"]) == 40
    assert state["git_dirty"] is False
    assert "clean tree" in commit_line(state) and "uncommitted" not in commit_line(state)


def test_a_changed_or_new_file_makes_the_run_dirty_and_is_named(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    (repo / "new.py").write_text("y = 2\n")  # never added: it still changed what was measured
    state = git_state(repo)
    assert state["git_dirty"] is True and state["git_changed_files"] == ["new.py"]
    (repo / "a.py").write_text("x = 2\n")
    state = git_state(repo)
    assert state["git_changed_files"] == ["a.py", "new.py"] and state["git_changed_count"] == 2
    line = commit_line(state)
    assert "**with uncommitted changes** (2 files: `a.py`, `new.py`)" in line
    assert "belong to no commit" in line


def test_outside_git_the_stamp_says_it_does_not_know(tmp_path: Path) -> None:
    state = git_state(tmp_path)
    assert state["git_dirty"] is None and "unknown" in commit_line(state)


def test_this_checkout_is_stamped_as_git_sees_it() -> None:
    state = git_state()
    assert state["git_commit"] == git(REPO, "rev-parse", "HEAD").strip()
    assert state["git_dirty"] == bool(git(REPO, "status", "--porcelain").strip())
