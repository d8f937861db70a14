"""gpurepro/environment.py: the checkout's state as run.json records it."""
import subprocess

import pytest

from gpurepro.environment import git_state


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def test_no_repository_and_no_commit_yet_have_no_commit(tmp_path, repo):
    assert git_state(tmp_path / "nowhere") == {"commit": None, "dirty": None}
    assert git_state(repo) == {"commit": None, "dirty": None}


def test_commit_branch_and_dirty_from_tracked_files_only(repo):
    (repo / "a.txt").write_text("a")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "untracked.txt").write_text("u")  # not part of the build: not dirty
    assert git_state(repo) == {"commit": head, "dirty": False, "branch": "main"}
    (repo / "a.txt").write_text("changed")
    assert git_state(repo) == {"commit": head, "dirty": True, "branch": "main"}
    git(repo, "checkout", "-q", "--detach")
    assert git_state(repo)["branch"] == "HEAD"  # what `git rev-parse --abbrev-ref HEAD` says when detached
