"""experiments/provenance.py: the commit a result records."""

from experiments import provenance


def test_a_commit_given_in_the_environment_wins_over_git(monkeypatch):
    """A tree copied to a lent machine carries a .git that is not its own: the commit it was copied from is told."""
    monkeypatch.setenv("KALMAN_OPTIM_GIT_COMMIT", "0123456789abcdef")
    assert provenance.git_state() == ("0123456789abcdef", None)  # "dirty" unknown
    monkeypatch.delenv("KALMAN_OPTIM_GIT_COMMIT")
    commit, _ = provenance.git_state()
    assert commit != "0123456789abcdef"
