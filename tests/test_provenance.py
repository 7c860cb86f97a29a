"""`git_commit`: "-dirty" means changed code, not changed results."""

import subprocess

import pytest

from interp.provenance import git_commit


@pytest.fixture
def repo(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "summary.json").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_clean_tree_has_no_suffix(repo):
    assert not git_commit(repo).endswith("-dirty")


def test_changed_results_do_not_make_the_tree_dirty(repo):
    (repo / "results" / "summary.json").write_text('{"a": 1}\n')
    assert not git_commit(repo).endswith("-dirty")


def test_changed_code_makes_the_tree_dirty(repo):
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo).endswith("-dirty")
