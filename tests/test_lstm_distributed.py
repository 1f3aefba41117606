"""The LSTM's recurrent batch norm under tf.distribute: on 2 replicas (logical CPUs) the
trainer's TrainStep trains as on one device, statistics synchronized per time step, moving
statistics included; unsynchronized, each replica uses its own statistics."""

import pytest

# The 2-replica measurements come from one subprocess shared with test_distributed.py
# (conftest.py's `mirrored`, made by tests/distributed_check.py and tests/lstm_mirrored_check.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mirrored")]


@pytest.mark.parametrize("impl", ["custom", "builtin"])
def test_two_replicas_train_as_one_device(mirrored, impl):
    assert mirrored["lstm/replicas"] == 2
    result = {k.split("/")[-1]: v for k, v in mirrored.items() if k.startswith(f"lstm/{impl}/")}
    assert result["moving_rows"] == 4 and result["moving_moved"] > 1e-3
    # Synchronized statistics over 2 x 16 examples are those of the 32: the same 3 steps up
    # to float32 rounding of the split sums, every weight and per-step moving statistic.
    assert result["sync_max_diff"] < 1e-5
    # Each replica's own statistics: the moving variances are the mean of the halves', which
    # differ in mean by 0.5, not the global batch's.
    assert result["unsync_max_diff"] > 1e-4
