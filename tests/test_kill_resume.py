"""The kill-and-resume drill (scripts/kill_resume.py) with a CI-sized number of kills: the
first before the run's first checkpoint, restarted with the same command (no --start_over)."""

import argparse

import pytest

from scripts import kill_resume


@pytest.mark.slow
def test_survives_sigkill_before_the_first_checkpoint_at_random_moments_and_mid_save(tmp_path):
    findings = kill_resume.run(
        argparse.Namespace(
            kills=6,
            steps=300,
            max_to_keep=3,
            seed=1,
            timeout=300,
            workdir=str(tmp_path),
            verbose=False,
        )
    )
    assert findings["problems"] == []
    assert findings["kills"] == 6 and findings["mid_save_kills"] == 3
    assert findings["early_kills"] == 1 and findings["started_again_from_0"] >= 1
    assert findings["final_weights_bitwise_equal"]
    assert findings["incomplete_checkpoint_selected"] == 0 and findings["checkpoints_lost"] == 0
    assert findings["checkpoints_kept"] <= 3
    assert (tmp_path / "killed" / "earlier-attempts" / "1-before-first-checkpoint").is_dir()
