"""Each job folder of a sweep belongs to one sweep process (ftharness/sweep/job_folders.py)."""

from ftharness.sweep.job_folders import claim_job_numbers


def test_a_batch_claims_consecutive_folders_past_those_that_exist(tmp_path):
    sweep_dir = tmp_path / "sweep"
    assert claim_job_numbers(sweep_dir, 0, 2) == 0
    assert claim_job_numbers(sweep_dir, 0, 2) == 2  # 0 and 1 are taken: another process's, or this one's
    (sweep_dir / "5").mkdir()  # another process's job
    assert claim_job_numbers(sweep_dir, 4, 2) == 6  # 4 alone is free: given back, the batch starts after 5
    assert sorted(int(p.name) for p in sweep_dir.iterdir()) == [0, 1, 2, 3, 5, 6, 7]


def test_two_claims_from_the_same_number_never_share_a_folder(tmp_path):
    first, second = claim_job_numbers(tmp_path, 0, 3), claim_job_numbers(tmp_path, 0, 3)
    assert {*range(first, first + 3)}.isdisjoint(range(second, second + 3))
